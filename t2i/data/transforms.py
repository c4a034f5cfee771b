"""Training transforms: resize, random crop (Reed: 76 -> 64) or centre crop, horizontal flip, scale to [-1, 1];
per-epoch caption sampling, and mismatched ("wrong") captions from a different class.

One input path: a whole split is decoded once into one uint8 tensor [N, 3, L, L] (`images_to_uint8`), and
`TensorBatchLoader` augments whole batches on that tensor (CPU or GPU) with `augment_batch`, with no per-item
decoding and no text encoder in the loop (the embeddings are cached).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
import torch
from datasets import Dataset
from datasets import Image as DatasetsImage
from PIL import Image

from .embedding_cache import CaptionEmbeddings

LOAD_RATIO = 76 / 64  # Reed et al.: load at 76 px, random-crop 64 px


def load_size_for(resolution: int) -> int:
    """Side of the stored image before random cropping to `resolution` (76 for 64, 152 for 128)."""
    return round(resolution * LOAD_RATIO)


def open_image(value: Image.Image | dict) -> Image.Image:
    """A PIL image from a decoded image or an undecoded `datasets.Image` value ({"bytes", "path"})."""
    if isinstance(value, Image.Image):
        return value
    return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])


class UnsupportedImageError(ValueError):
    """An image whose pixel values cannot be mapped to 8-bit RGB without guessing (the message says why)."""


def to_rgb8(image: Image.Image) -> Image.Image:
    """A faithful 8-bit RGB copy of any image Pillow opens.

    - 1, L, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV: Pillow's conversions (LAB and HSV colorimetric);
    - anything with transparency (RGBA, LA, PA, P with a transparent colour, premultiplied RGBa / La): composited
      on white;
    - 16-bit grayscale (I;16 and its byte orders): scaled from 0–65535 to 0–255 (Pillow's own conversion clips
      everything above 255 to white);
    - 32-bit integer (I) and float (F) grayscale: values in 0–255 are kept; 0–65535 (integer) and 0–1 (float)
      are scaled; any other range is refused.

    Raises:
        UnsupportedImageError: a 32-bit image whose value range is not one of those.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply first
        image = image.convert({"La": "LA", "RGBa": "RGBA"}[mode])
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _gray_to_uint8(image)
        if "transparency" in image.info:  # a transparent grey value (PNG tRNS): white, like every other alpha
            gray[np.asarray(image) == image.info["transparency"]] = 255
        return Image.fromarray(gray, "L").convert("RGB")
    if "A" in image.getbands() or "transparency" in image.info:
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _gray_to_uint8(image: Image.Image) -> np.ndarray:
    """8-bit values of a 16-bit, 32-bit integer or float grayscale image (see `to_rgb8`)."""
    mode = image.mode
    if mode.startswith("I;16"):
        return np.round(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8)
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0 or not np.isfinite(values).all():
        raise UnsupportedImageError(f"{mode} image with values from {low:g} to {high:g}: no faithful 8-bit mapping")
    if mode == "F" and high <= 1.001:  # 0–1 floats, allowing for rounding just above 1
        values = np.clip(values, 0, 1) * 255
    elif high > 255 and (mode == "F" or high > 65535):
        raise UnsupportedImageError(f"{mode} image with values up to {high:g}: no faithful 8-bit mapping")
    elif high > 255:
        values = values / 257
    return np.round(values).astype(np.uint8)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB image with its shorter side resized to `size`, centre-cropped to size x size."""
    if image.format == "JPEG" and image.mode in ("RGB", "L", "YCbCr"):  # not yet decoded: libjpeg decodes at a reduced scale
        image.draft("RGB", (size, size))
    image = to_rgb8(image)
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC, reducing_gap=3.0)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """uint8 tensor [3, H, W] of an RGB PIL image."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def images_to_uint8(dataset: Dataset, size: int, image_column: str = "image", batch_size: int = 256) -> torch.Tensor:
    """Decode every image of `dataset` once into a uint8 tensor [N, 3, size, size] (the fast path)."""
    out = torch.empty((len(dataset), 3, size, size), dtype=torch.uint8)
    column = _undecoded(dataset.select_columns([image_column]), image_column)
    for start in range(0, len(dataset), batch_size):
        for offset, value in enumerate(column[start : start + batch_size][image_column]):
            out[start + offset] = pil_to_uint8(resize_center_crop(open_image(value), size))
    return out


def _undecoded(dataset: Dataset, image_column: str) -> Dataset:
    # datasets decodes images fully; decoding them here instead allows reduced-scale JPEG decoding.
    return dataset.cast_column(image_column, DatasetsImage(decode=False))


def augment_batch(
    images: torch.Tensor, resolution: int, train: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 [B, 3, L, L] -> float [B, 3, resolution, resolution] in [-1, 1].

    Training: an independent random crop and horizontal flip per image, drawn from `generator` (a CPU
    generator, so results are the same on every device). Otherwise: the centre crop.
    """
    batch, _, height, width = images.shape
    if not train:
        top, left = (height - resolution) // 2, (width - resolution) // 2
        crops = images[:, :, top : top + resolution, left : left + resolution]
    else:
        top = torch.randint(0, height - resolution + 1, (batch,), generator=generator)
        left = torch.randint(0, width - resolution + 1, (batch,), generator=generator)
        flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
        crops = torch.stack([
            images[i, :, y : y + resolution, x : x + resolution] for i, (y, x) in enumerate(zip(top.tolist(), left.tolist()))
        ])
        crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
    return crops.float().div_(127.5).sub_(1.0)


def sample_mismatched_indices(
    indices: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each image index, a random image of a *different class*, whose caption serves as the
    mismatched text of GAN-CLS. Without class labels, pass `torch.arange(N)` (any other image)."""
    if labels.unique().numel() < 2:
        raise ValueError("mismatched captions need at least two classes")
    wrong = torch.randint(0, len(labels), indices.shape, generator=generator)
    clash = labels[wrong] == labels[indices]
    while clash.any():  # rejection sampling: with 82 classes a redraw is rarely needed
        wrong[clash] = torch.randint(0, len(labels), (int(clash.sum()),), generator=generator)
        clash = labels[wrong] == labels[indices]
    return wrong


class TensorBatchLoader:
    """Fast-path epoch iterator over pre-decoded images and cached caption embeddings.

    Each batch is a dict: `pixel_values` float [B, 3, R, R] in [-1, 1], `text_embeds` [B, D] (the mean of
    `captions_per_image` random captions of each image, 1 by default; Reed uses 4), `wrong_text_embeds`
    [B, D] (a caption of an image of another class: with `hard_negatives` K > 1, the one of K such captions
    closest by cosine to the batch's `text_embeds` row, hard negatives in the spirit of VSE++ (Faghri et al.,
    BMVC 2018), so the discriminator must check more than the attribute a random caption gets wrong first; a
    candidate identical to the right text is skipped; with `counterfactual_negatives` p > 0, a row's wrong text
    is instead, with probability p, the counterfactual of its right captions: the same caption rows of
    `counterfactual_embeddings`, the embeddings of each caption with one attribute word swapped,
    `t2i.data.counterfactual`, for rows whose captions all have one, `swapped` [total captions] bool),
    `labels` and `indices`. With `fragment_captions` p > 0 a row's right text is, with probability p, the
    mean of the same captions' fragments instead (`fragment_embeddings`, one row per caption: spans of a few
    of its words, `t2i.data.fragments`), so G and D also train on the short texts visitors type. With
    `counterfactual_texts`, each batch also has `counterfactual_text_embeds` [B, D] (the counterfactual of the row's
    right captions) and `counterfactual_valid` [B] bool (the row has one, and its right text is no fragment), the
    texts G draws for `GanClsObjective.counterfactual_fakes`. All randomness comes from
    `generator`, so a seeded generator replays the same epochs; with several processes, give each the same
    seed and its `process_index`: they share the permutation and take disjoint parts of every batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        embeddings: CaptionEmbeddings,
        labels: torch.Tensor | None,
        batch_size: int,
        resolution: int,
        train: bool = True,
        captions_per_image: int = 1,
        generator: torch.Generator | None = None,
        drop_last: bool = True,
        device: torch.device | str | None = None,
        process_index: int = 0,
        num_processes: int = 1,
        hard_negatives: int = 1,
        counterfactual_negatives: float = 0.0,
        counterfactual_embeddings: CaptionEmbeddings | None = None,
        swapped: torch.Tensor | None = None,
        fragment_captions: float = 0.0,
        fragment_embeddings: CaptionEmbeddings | None = None,
        counterfactual_texts: bool = False,
    ) -> None:
        if hard_negatives < 1:
            raise ValueError(f"hard_negatives must be ≥ 1 (1: a random mismatched caption), got {hard_negatives}")
        for name, p in (("counterfactual_negatives", counterfactual_negatives), ("fragment_captions", fragment_captions)):
            if not 0.0 <= p <= 1.0:  # NaN fails this too
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if counterfactual_negatives > 0 or counterfactual_texts:
            if counterfactual_embeddings is None or swapped is None:
                raise ValueError("counterfactual_negatives > 0 and counterfactual_texts each needs counterfactual_embeddings and swapped")
            swapped = torch.as_tensor(swapped, dtype=torch.bool)
            if counterfactual_embeddings.embeddings.shape != embeddings.embeddings.shape or swapped.shape != embeddings.embeddings.shape[:1]:
                raise ValueError(f"counterfactual embeddings {tuple(counterfactual_embeddings.embeddings.shape)} and swapped "
                                 f"{tuple(swapped.shape)} must have one row per caption, as the embeddings {tuple(embeddings.embeddings.shape)}")
        if fragment_captions > 0 and (fragment_embeddings is None or fragment_embeddings.embeddings.shape != embeddings.embeddings.shape):
            raise ValueError("fragment_captions > 0 needs fragment_embeddings with one row per caption, as the embeddings "
                             f"{tuple(embeddings.embeddings.shape)}")
        if len(images) != len(embeddings):
            raise ValueError(f"{len(images)} images but caption embeddings for {len(embeddings)}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.embeddings = embeddings.to(self.device)
        self.labels = labels.cpu() if labels is not None else torch.arange(len(images))
        self.batch_size, self.resolution, self.train = batch_size, resolution, train
        self.captions_per_image = captions_per_image
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.drop_last = drop_last
        self.process_index, self.num_processes = process_index, num_processes
        self.hard_negatives = hard_negatives
        self.counterfactual_negatives, self.counterfactual_texts = counterfactual_negatives, counterfactual_texts
        if counterfactual_negatives > 0 or counterfactual_texts:
            self.counterfactual_embeddings = counterfactual_embeddings.to(self.device)
            self.swapped = swapped.cpu()
        self.fragment_captions = fragment_captions
        if fragment_captions > 0:
            self.fragment_embeddings = fragment_embeddings.to(self.device)

    def __len__(self) -> int:
        global_batch = self.batch_size * self.num_processes
        count = len(self.images) / global_batch
        return math.floor(count) if self.drop_last else math.ceil(count)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        global_batch = self.batch_size * self.num_processes
        for step in range(len(self)):
            batch = order[step * global_batch : (step + 1) * global_batch]
            # Every process draws the randomness of the whole global batch, so generators stay in sync.
            wrong = sample_mismatched_indices(batch.repeat_interleave(self.hard_negatives), self.labels, self.generator)
            pixels = augment_batch(self.images[batch.to(self.device)], self.resolution, self.train, self.generator)
            rows = self.embeddings.sample_rows(batch, self.generator, self.captions_per_image)
            text = self.embeddings.mean_of(rows)
            fragment = torch.zeros(len(batch), dtype=torch.bool)
            if self.fragment_captions > 0:
                fragment = torch.rand(len(batch), generator=self.generator) < self.fragment_captions
                text = torch.where(fragment.to(self.device)[:, None], self.fragment_embeddings.mean_of(rows), text)
            wrong_text = self.embeddings.sample(wrong, self.generator)
            if self.hard_negatives > 1:
                candidates = wrong_text.view(len(batch), self.hard_negatives, -1)
                similarity = torch.nn.functional.cosine_similarity(candidates, text[:, None], dim=-1)
                # Another class's image can carry the very same caption text: that is no negative at all.
                closest = similarity.masked_fill(similarity > 1 - 1e-6, -2.0).argmax(dim=1)
                wrong_text = candidates[torch.arange(len(batch), device=candidates.device), closest]
            if self.counterfactual_negatives > 0:
                use = (torch.rand(len(batch), generator=self.generator) < self.counterfactual_negatives) & self.swapped[rows].all(dim=1)
                counterfactual = self.counterfactual_embeddings.mean_of(rows)
                wrong_text = torch.where(use.to(self.device)[:, None], counterfactual, wrong_text)
            sizes = [len(part) for part in torch.arange(len(batch)).tensor_split(self.num_processes)]
            start = sum(sizes[: self.process_index])
            mine = slice(start, start + sizes[self.process_index])  # a view, not a copy
            out = {
                "pixel_values": pixels[mine],
                "text_embeds": text[mine],
                "wrong_text_embeds": wrong_text[mine],
                "labels": self.labels[batch[mine]].to(self.device),
                "indices": batch[mine].to(self.device),
            }
            if self.counterfactual_texts:
                out["counterfactual_text_embeds"] = self.counterfactual_embeddings.mean_of(rows)[mine]
                out["counterfactual_valid"] = (self.swapped[rows].all(dim=1) & ~fragment)[mine].to(self.device)
            yield out
