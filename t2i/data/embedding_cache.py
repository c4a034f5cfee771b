"""Text-embedding cache: every caption of a dataset is encoded once per (encoder, captions) fingerprint.

Text encoders are frozen during GAN training, so the GAN loop only ever reads embeddings from here. The
cache is a safetensors file in `<datasets cache>/t2i_text_embeddings/` (or a given `cache_dir`), keyed by
the encoder's `fingerprint()` and a hash of the captions themselves (so any change to the text, or its
order, is a different key). Duplicate captions are encoded once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "t2i_text_embeddings"
_ENCODE_CHUNK = 8192  # distinct captions per encoder call: the unit of progress logs and of a resumed build


class TextEncoderLike(Protocol):
    """What the cache needs from a text encoder (e.g. `t2i.text_encoders.TextEncoder`)."""

    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor: ...

    def fingerprint(self) -> str: ...


@dataclass
class CaptionEmbeddings:
    """All caption embeddings of a dataset: image i's captions are rows `offsets[i]:offsets[i + 1]`."""

    embeddings: torch.Tensor  # float32 [total_captions, D]
    offsets: torch.Tensor  # int64 [num_images + 1], on the CPU

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return self.embeddings.shape[1]

    @property
    def counts(self) -> torch.Tensor:
        """Number of captions of each image, int64 [num_images]."""
        return self.offsets[1:] - self.offsets[:-1]

    def of_image(self, index: int) -> torch.Tensor:
        """Embeddings of all captions of one image, [n_i, D]."""
        return self.embeddings[self.offsets[index] : self.offsets[index + 1]]

    def sample(self, indices: torch.Tensor, generator: torch.Generator | None = None, k: int = 1) -> torch.Tensor:
        """For each image index, the mean embedding of k captions drawn without replacement (with
        replacement only when an image has fewer than k); [B, D] on the embeddings' device."""
        return self.mean_of(self.sample_rows(indices, generator, k))

    def mean_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The mean embedding of each row's captions: rows [B, k] of caption indices → [B, D]."""
        return self.embeddings[rows.to(self.embeddings.device)].mean(dim=1)

    def sample_rows(self, indices: torch.Tensor, generator: torch.Generator | None = None, k: int = 1) -> torch.Tensor:
        """The caption indices `sample` averages: [B, k], int64 on the CPU."""
        indices = indices.cpu()
        counts = self.counts[indices]
        if k == 1:
            picks = (torch.rand(len(indices), generator=generator) * counts).long()[:, None]
        else:  # random keys, invalid slots sorted last; column j % count is then a valid distinct pick
            keys = torch.rand(len(indices), int(counts.max()), generator=generator)
            keys[torch.arange(keys.shape[1]) >= counts[:, None]] = 2.0
            order = keys.argsort(dim=1)
            picks = order.gather(1, torch.arange(k)[None, :] % counts[:, None])
        return self.offsets[indices][:, None] + picks

    def to(self, device: torch.device | str) -> CaptionEmbeddings:
        """The same embeddings on `device` (offsets stay on the CPU, where sampling happens)."""
        return CaptionEmbeddings(self.embeddings.to(device), self.offsets)


def captions_fingerprint(captions: Sequence[Sequence[str]]) -> str:
    """SHA-256 of the captions, image by image, in order."""
    digest = hashlib.sha256()
    for image_captions in captions:
        digest.update(len(image_captions).to_bytes(4, "little"))
        for caption in image_captions:
            encoded = caption.encode("utf-8")
            digest.update(len(encoded).to_bytes(4, "little") + encoded)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """`<HF datasets cache>/t2i_text_embeddings`."""
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / CACHE_SUBDIR


def encode_captions(
    captions: Sequence[Sequence[str]],
    encoder: TextEncoderLike,
    batch_size: int = 256,
    chunk_dir: str | os.PathLike | None = None,
    chunk_metadata: dict[str, str] | None = None,
) -> CaptionEmbeddings:
    """Encode every caption (each distinct text once), without any caching.

    With ``chunk_dir``, every 8,192 distinct captions are also written there as they are done (with
    ``chunk_metadata``), and chunks already there with the same metadata are read instead of encoded, so an
    interrupted build resumes where it stopped (`load_or_build_caption_embeddings` uses this).
    """
    flat = [caption for image_captions in captions for caption in image_captions]
    unique = list(dict.fromkeys(flat))
    position = {text: i for i, text in enumerate(unique)}
    parts = []
    for start in range(0, len(unique), _ENCODE_CHUNK):
        texts = unique[start : start + _ENCODE_CHUNK]
        chunk = Path(chunk_dir) / f"{start}.safetensors" if chunk_dir is not None else None
        metadata = {**(chunk_metadata or {}), "first_caption": texts[0], "count": str(len(texts))}
        if chunk is not None and chunk.is_file():
            with safe_open(str(chunk), framework="pt") as done:
                if done.metadata() == metadata:
                    parts.append(done.get_tensor("embeddings"))
                    logger.info("reused %d / %d distinct captions from %s", start + len(texts), len(unique), chunk)
                    continue
        parts.append(encoder.encode(texts, batch_size=batch_size).float().cpu())
        if chunk is not None:
            chunk.parent.mkdir(parents=True, exist_ok=True)
            _save_atomically({"embeddings": parts[-1].contiguous()}, chunk, metadata)
        logger.info("encoded %d / %d distinct captions", start + len(texts), len(unique))
    embeddings = torch.cat(parts)[torch.tensor([position[text] for text in flat], dtype=torch.long)]
    offsets = torch.tensor([0, *(len(c) for c in captions)], dtype=torch.long).cumsum(0)
    return CaptionEmbeddings(embeddings.contiguous(), offsets)


def _save_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # readers never see half a file
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


def cache_path(encoder_fingerprint: str, dataset_fingerprint: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the embeddings of one (encoder, captions) pair are stored."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"{encoder_fingerprint[:16]}-{dataset_fingerprint[:16]}.safetensors"


def load_or_build_caption_embeddings(
    captions: Dataset | Sequence[Sequence[str]],
    encoder: TextEncoderLike,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    caption_column: str = "captions",
) -> CaptionEmbeddings:
    """Caption embeddings of a dataset, from the cache when present, else encoded and cached.

    `captions` is a `datasets.Dataset` (its `caption_column` is read) or a list of caption lists. A cache
    hit does not call the encoder; a build that was killed resumes from the chunks it had finished. Under multi-process training, call this on the main process first
    (e.g. inside `accelerator.main_process_first()`), so the other processes get a hit.
    """
    if hasattr(captions, "column_names"):  # a datasets.Dataset: read only the caption column
        captions = captions.select_columns([caption_column]).to_dict()[caption_column]
    encoder_fp, dataset_fp = encoder.fingerprint(), captions_fingerprint(captions)
    path = cache_path(encoder_fp, dataset_fp, cache_dir)
    if path.exists():
        with safe_open(str(path), framework="pt") as cached:
            if cached.metadata() == {"encoder_fingerprint": encoder_fp, "dataset_fingerprint": dataset_fp}:
                logger.info("text embeddings: cache hit %s", path)
                return CaptionEmbeddings(cached.get_tensor("embeddings"), cached.get_tensor("offsets"))
        logger.warning("text embeddings: %s belongs to other fingerprints; rebuilding", path)
    logger.info("text embeddings: encoding %d images' captions into %s", len(captions), path)
    metadata = {"encoder_fingerprint": encoder_fp, "dataset_fingerprint": dataset_fp}
    chunks = path.with_name(f"{path.stem}.chunks")  # what a killed build had done: reused, removed once complete
    result = encode_captions(captions, encoder, batch_size, chunk_dir=chunks, chunk_metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically({"embeddings": result.embeddings, "offsets": result.offsets}, path, metadata)
    shutil.rmtree(chunks, ignore_errors=True)
    return result
