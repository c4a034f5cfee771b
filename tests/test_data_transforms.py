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

    whole = TensorBatchLoader(images, embeddings, labels, 8, 64, generator=torch.Generator().manual_seed(5))
    parts = [TensorBatchLoader(images, embeddings, labels, 4, 64, generator=torch.Generator().manual_seed(5),
                               process_index=rank, num_processes=2) for rank in range(2)]
    for full, first, second in zip(whole, *parts):
        assert torch.equal(torch.cat([first["indices"], second["indices"]]), full["indices"])
        assert torch.equal(torch.cat([first["pixel_values"], second["pixel_values"]]), full["pixel_values"])


def test_images_to_uint8_decodes_a_split_once(tiny_synthetic_dataset):
    test = datasets.load_dataset(str(tiny_synthetic_dataset), split="test")
    uint8 = images_to_uint8(test.select(range(4)), load_size_for(32))
    assert uint8.shape == (4, 3, 38, 38) and uint8.dtype == torch.uint8