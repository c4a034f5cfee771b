"""Training transforms: crop/flip/scale on uint8 tensors, caption sampling, mismatched captions, loaders."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data import (
    CaptionEmbeddings, TensorBatchLoader, augment_batch, images_to_uint8, load_size_for,
    resize_center_crop, sample_mismatched_indices,
)


def _images(n: int = 6, size: int = 76) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _embeddings(counts: list[int], dim: int = 4) -> CaptionEmbeddings:
    offsets = torch.tensor([0, *counts]).cumsum(0)
    return CaptionEmbeddings(torch.randn(int(offsets[-1]), dim, generator=torch.Generator().manual_seed(1)), offsets)


def test_load_size_follows_reed():
    assert load_size_for(64) == 76 and load_size_for(128) == 152


def test_augment_shapes_range_and_determinism():
    images = _images()
    out = augment_batch(images, 64, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, augment_batch(images, 64, True, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment_batch(images, 64, True, torch.Generator().manual_seed(1)))
    centre = augment_batch(images, 64, train=False)
    assert torch.equal(centre, images[:, :, 6:70, 6:70].float() / 127.5 - 1)


def test_every_training_crop_is_a_crop_or_its_mirror():
    images = _images(n=16)
    out = augment_batch(images, 64, True, torch.Generator().manual_seed(3))
    flips = 0
    for image, crop in zip(images.float() / 127.5 - 1, out):
        windows = image.unfold(1, 64, 1).unfold(2, 64, 1).permute(1, 2, 0, 3, 4)  # [13, 13, 3, 64, 64]
        plain = (windows == crop).flatten(2).all(-1).any()
        mirrored = (windows == crop.flip(-1)).flatten(2).all(-1).any()
        assert plain or mirrored
        flips += int(mirrored and not plain)
    assert 2 <= flips <= 14


def test_resize_center_crop_non_square():
    image = Image.fromarray(np.zeros((100, 50, 3), dtype=np.uint8), "RGB").convert("L")
    out = resize_center_crop(image, 76)
    assert out.size == (76, 76) and out.mode == "RGB"


def test_caption_sampling():
    embeddings = _embeddings([1, 3, 5])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        one = embeddings.sample(torch.tensor([2, 2]), generator)
        rows = embeddings.of_image(2)
        assert all((rows == vector).all(-1).any() for vector in one)
    # k = number of captions: drawn without replacement, so the mean of all of them
    assert torch.allclose(embeddings.sample(torch.tensor([1]), generator, k=3)[0], embeddings.of_image(1).mean(0))
    assert torch.allclose(embeddings.sample(torch.tensor([0]), generator, k=4)[0], embeddings.of_image(0)[0])


def test_mismatched_captions_come_from_another_class():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    indices = torch.arange(7).repeat(30)
    wrong = sample_mismatched_indices(indices, labels, torch.Generator().manual_seed(0))
    assert (labels[wrong] != labels[indices]).all()
    with pytest.raises(ValueError, match="two classes"):
        sample_mismatched_indices(indices[:3], torch.zeros(7, dtype=torch.long))


def test_tensor_batch_loader_is_deterministic_and_shards_batches():
    images, embeddings, labels = _images(n=20), _embeddings([2] * 20), torch.arange(20) % 5

    def run(seed: int, **kwargs):
        loader = TensorBatchLoader(images, embeddings, labels, batch_size=4, resolution=64,
                                   generator=torch.Generator().manual_seed(seed), **kwargs)
        return [batch for _ in range(2) for batch in loader]

    batches = run(0, captions_per_image=2)
    assert len(batches) == 10
    batch = batches[0]
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["text_embeds"].shape == (4, 4)
    assert batch["wrong_text_embeds"].shape == (4, 4) and batch["labels"].tolist() == labels[batch["indices"]].tolist()
    for batch in batches:  # k = 2 of 2 captions: the mean of both
        expected = torch.stack([embeddings.of_image(int(i)).mean(0) for i in batch["indices"]])
        assert torch.allclose(batch["text_embeds"], expected)
    again = run(0, captions_per_image=2)
    for a, b in zip(batches, again):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["indices"], b["indices"])
    assert sorted(torch.cat([b["indices"] for b in batches[:5]]).tolist()) == list(range(20))  # one epoch: a permutation

    for hard_negatives in (1, 4):  # hard negatives are picked on the global batch, before each process's share
        whole = TensorBatchLoader(images, embeddings, labels, 8, 64, generator=torch.Generator().manual_seed(5), hard_negatives=hard_negatives)
        parts = [TensorBatchLoader(images, embeddings, labels, 4, 64, generator=torch.Generator().manual_seed(5),
                                   process_index=rank, num_processes=2, hard_negatives=hard_negatives) for rank in range(2)]
        for full, first, second in zip(whole, *parts):
            for key in ("indices", "pixel_values", "wrong_text_embeds"):
                assert torch.equal(torch.cat([first[key], second[key]]), full[key]), key


def test_hard_negatives_pick_the_closest_other_class_caption():
    images, labels = _images(n=24), torch.arange(24) % 6
    # One caption per image, on the unit circle by class (class c at angle c·60° plus a little per image): the
    # closest other-class caption is always a neighbouring class's, a random one is often the opposite class's.
    # Norms spread over [0.5, 2], as real embeddings' do: the pick must be by cosine, not by inner product.
    angle = labels * torch.pi / 3 + torch.arange(24) * 0.001
    norms = 0.5 + 1.5 * torch.rand(24, 1, generator=torch.Generator().manual_seed(2))
    unit = torch.stack([angle.cos(), angle.sin()], dim=1)
    embeddings = CaptionEmbeddings(unit * norms, torch.arange(25))

    def similarities(hard_negatives: int) -> torch.Tensor:
        loader = TensorBatchLoader(images, embeddings, labels, batch_size=8, resolution=64,
                                   generator=torch.Generator().manual_seed(0), hard_negatives=hard_negatives)
        cosines = []
        for _ in range(10):
            for batch in loader:
                wrong_classes = [int(labels[(embeddings.embeddings - w).norm(dim=1).argmin()]) for w in batch["wrong_text_embeds"]]
                assert all(w != int(c) for w, c in zip(wrong_classes, batch["labels"]))  # still another class
                cosines.append(torch.nn.functional.cosine_similarity(batch["wrong_text_embeds"], batch["text_embeds"]))
        return torch.cat(cosines)

    random, hard = similarities(1), similarities(16)
    assert random.min() < -0.9 and random.mean() < 0.1  # a random class: the opposite one is as likely as any
    assert hard.min() > 0.45 and hard.mean() > 0.49  # 16 candidates: nearly always a neighbouring class, cos 60°
    # A candidate with the right caption's very text (another class can share it) is never the negative.
    spokes = torch.arange(13) * 2 * torch.pi / 13  # 13 distinct captions, at most cos 28° alike
    distinct = torch.stack([spokes.cos(), spokes.sin()], dim=1)
    twin = CaptionEmbeddings(torch.cat([distinct[:12], distinct[1:]]), torch.arange(25))  # image i + 11: image i's text, another class
    batch = next(iter(TensorBatchLoader(images, twin, labels, batch_size=24, resolution=64, hard_negatives=16,
                                        generator=torch.Generator().manual_seed(0))))
    assert torch.nn.functional.cosine_similarity(batch["wrong_text_embeds"], batch["text_embeds"]).max() < 0.99
    with pytest.raises(ValueError, match="hard_negatives must be ≥ 1"):
        TensorBatchLoader(images, embeddings, labels, batch_size=8, resolution=64, hard_negatives=0)


def test_one_hard_negative_keeps_the_random_stream():
    """hard_negatives=1 is Reed's random mismatched caption, drawn exactly as before the option existed."""
    images, embeddings, labels = _images(n=12), _embeddings([2] * 12), torch.arange(12) % 3
    generator = torch.Generator().manual_seed(4)
    batch = next(iter(TensorBatchLoader(images, embeddings, labels, 4, 64, generator=torch.Generator().manual_seed(4))))
    order = torch.randperm(12, generator=generator)[:4]
    wrong = sample_mismatched_indices(order, labels, generator)
    augment_batch(images[order], 64, True, generator)
    embeddings.sample(order, generator)
    assert torch.equal(batch["wrong_text_embeds"], embeddings.sample(wrong, generator))


def test_images_to_uint8_decodes_a_split_once(tiny_synthetic_dataset):
    test = datasets.load_dataset(str(tiny_synthetic_dataset), split="test")
    uint8 = images_to_uint8(test.select(range(4)), load_size_for(32))
    assert uint8.shape == (4, 3, 38, 38) and uint8.dtype == torch.uint8

def test_counterfactual_texts_are_each_rows_own_edit_and_valid_only_for_whole_captions():
    images, labels = _images(n=12), torch.arange(12) % 3
    embeddings = _embeddings([2] * 12)
    counterfactual = CaptionEmbeddings(embeddings.embeddings + 100.0, embeddings.offsets)
    fragments = CaptionEmbeddings(embeddings.embeddings - 100.0, embeddings.offsets)
    swapped = torch.ones(24, dtype=torch.bool)
    swapped[::2] = False
    loader = TensorBatchLoader(images, embeddings, labels, 12, 64, generator=torch.Generator().manual_seed(3), counterfactual_texts=True,
                               counterfactual_embeddings=counterfactual, swapped=swapped, fragment_captions=0.5, fragment_embeddings=fragments)
    valid = total = 0
    for batch in (b for _ in range(10) for b in loader):
        fragment = batch["text_embeds"][:, 0] < -50
        whole = torch.where(fragment[:, None], batch["text_embeds"] + 100.0, batch["text_embeds"])
        assert torch.allclose(batch["counterfactual_text_embeds"], whole + 100.0)  # the edit of the row's own caption
        swappable = (whole != embeddings.embeddings[embeddings.offsets[batch["indices"]]]).any(dim=1)  # not the first caption
        assert not (batch["counterfactual_valid"] & fragment).any()  # a fragment's text is not what the edit changed
        assert torch.equal(batch["counterfactual_valid"], swappable & ~fragment)
        valid, total = valid + int(batch["counterfactual_valid"].sum()), total + len(fragment)
    assert 0.15 < valid / total < 0.35  # half the captions are swappable, half the rows are whole captions
    with pytest.raises(ValueError, match="counterfactual_texts each needs counterfactual_embeddings"):
        TensorBatchLoader(images, embeddings, labels, 4, 64, counterfactual_texts=True)


def test_counterfactual_negatives_are_the_right_captions_with_a_word_swapped():
    images, labels = _images(n=12), torch.arange(12) % 3
    embeddings = _embeddings([2] * 12)
    counterfactual = CaptionEmbeddings(embeddings.embeddings + 100.0, embeddings.offsets)  # far from every real caption
    swapped = torch.ones(24, dtype=torch.bool)
    swapped[::2] = False  # every image's first caption has no swappable word: it must not be a negative

    def batches(p: float, captions_per_image: int = 1) -> list[dict]:
        loader = TensorBatchLoader(images, embeddings, labels, 12, 64, captions_per_image=captions_per_image,
                                   generator=torch.Generator().manual_seed(3), counterfactual_negatives=p,
                                   counterfactual_embeddings=counterfactual, swapped=swapped)
        return [batch for _ in range(20) for batch in loader]

    used, rows_with_swaps = 0, 0
    for batch in batches(1.0):
        is_counterfactual = batch["wrong_text_embeds"][:, 0] > 50
        # A counterfactual is exactly the right caption's own edit: the same row, shifted by 100.
        assert torch.allclose(batch["wrong_text_embeds"][is_counterfactual], batch["text_embeds"][is_counterfactual] + 100.0)
        # The right caption of every other row is the unswappable first caption, so it got a random wrong one.
        first_captions = embeddings.embeddings[embeddings.offsets[batch["indices"]]]
        assert torch.equal(batch["text_embeds"][~is_counterfactual], first_captions[~is_counterfactual])
        used += int(is_counterfactual.sum())
        rows_with_swaps += len(batch["indices"])
    assert 0.35 < used / rows_with_swaps < 0.65  # half the rows' captions are swappable, and all of those are used
    half = sum(int((b["wrong_text_embeds"][:, 0] > 50).sum()) for b in batches(0.5)) / rows_with_swaps
    assert 0.15 < half < 0.35
    # Averaged captions (Reed's k = 4): the negative is the average of the same captions' edits, used only when all have one.
    for batch in batches(1.0, captions_per_image=2):
        assert not (batch["wrong_text_embeds"][:, 0] > 50).any()  # each image's pair includes its unswappable caption
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="counterfactual_negatives must be a probability"):
            TensorBatchLoader(images, embeddings, labels, 4, 64, counterfactual_negatives=p, counterfactual_embeddings=counterfactual, swapped=swapped)
    with pytest.raises(ValueError, match="needs counterfactual_embeddings"):
        TensorBatchLoader(images, embeddings, labels, 4, 64, counterfactual_negatives=0.5)
    with pytest.raises(ValueError, match="one row per caption"):
        TensorBatchLoader(images, embeddings, labels, 4, 64, counterfactual_negatives=0.5, counterfactual_embeddings=counterfactual,
                          swapped=swapped[:-1])
    # Off (the default), the batches are drawn exactly as before the option existed.
    plain = TensorBatchLoader(images, embeddings, labels, 4, 64, generator=torch.Generator().manual_seed(4))
    off = TensorBatchLoader(images, embeddings, labels, 4, 64, generator=torch.Generator().manual_seed(4),
                            counterfactual_negatives=0.0, counterfactual_embeddings=counterfactual, swapped=swapped)
    for a, b in zip(plain, off):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_fragment_captions_replace_the_right_text_by_its_own_fragments():
    images, labels = _images(n=12), torch.arange(12) % 3
    embeddings = _embeddings([2] * 12)
    fragments = CaptionEmbeddings(embeddings.embeddings + 100.0, embeddings.offsets)  # each caption's fragment, far from every caption

    def batches(p: float, captions_per_image: int = 1) -> list[dict]:
        loader = TensorBatchLoader(images, embeddings, labels, 12, 64, captions_per_image=captions_per_image,
                                   generator=torch.Generator().manual_seed(3), fragment_captions=p, fragment_embeddings=fragments)
        return [batch for _ in range(20) for batch in loader]

    rows = 0
    for batch in batches(1.0):
        # Every right text is a fragment of one of the image's own captions (the same caption row, shifted by 100).
        own = embeddings.embeddings.view(12, 2, -1)[batch["indices"]] + 100.0
        assert all(any(torch.equal(text, fragment) for fragment in mine) for text, mine in zip(batch["text_embeds"], own))
        assert (batch["wrong_text_embeds"][:, 0] < 50).all()  # the mismatched caption stays a whole caption
        rows += len(batch["indices"])
    share = sum(int((b["text_embeds"][:, 0] > 50).sum()) for b in batches(0.25)) / rows
    assert 0.15 < share < 0.35
    for batch in batches(1.0, captions_per_image=2):  # Reed's averaged captions: the average of the same captions' fragments
        own = embeddings.embeddings.view(12, 2, -1)[batch["indices"]].mean(dim=1) + 100.0
        assert torch.allclose(batch["text_embeds"], own)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fragment_captions must be a probability"):
            TensorBatchLoader(images, embeddings, labels, 4, 64, fragment_captions=p, fragment_embeddings=fragments)
    with pytest.raises(ValueError, match="needs fragment_embeddings with one row per caption"):
        TensorBatchLoader(images, embeddings, labels, 4, 64, fragment_captions=0.5)
    with pytest.raises(ValueError, match="needs fragment_embeddings with one row per caption"):
        TensorBatchLoader(images, embeddings, labels, 4, 64, fragment_captions=0.5,
                          fragment_embeddings=CaptionEmbeddings(fragments.embeddings[:-1], torch.arange(24)))
    plain = TensorBatchLoader(images, embeddings, labels, 4, 64, generator=torch.Generator().manual_seed(4))
    off = TensorBatchLoader(images, embeddings, labels, 4, 64, generator=torch.Generator().manual_seed(4), fragment_embeddings=fragments)
    for a, b in zip(plain, off):
        assert all(torch.equal(a[key], b[key]) for key in a)
