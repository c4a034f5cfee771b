"""Text-embedding cache: built once per (encoder, captions) fingerprint; a hit never calls the encoder."""

import zlib
from pathlib import Path

import datasets
import pytest
import torch

from t2i.data import CaptionEmbeddings, load_or_build_caption_embeddings
from t2i.data.embedding_cache import cache_path, captions_fingerprint, default_cache_dir


class CountingEncoder:
    """A stand-in text encoder: a fixed pseudo-random vector per text, and a count of encode calls."""

    embedding_dim = 8

    def __init__(self, name: str = "counting-v1") -> None:
        self.name, self.calls, self.texts = name, 0, []

    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        self.calls += 1
        self.texts += texts
        return torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts])

    def fingerprint(self) -> str:
        return self.name


CAPTIONS = [["a red flower", "five petals"], ["a red flower"], ["white edges", "a big disc", "thin petals"]]


def test_hit_does_not_call_the_encoder(tmp_path):
    encoder = CountingEncoder()
    built = load_or_build_caption_embeddings(CAPTIONS, encoder, cache_dir=tmp_path)
    assert encoder.calls == 1 and sorted(encoder.texts) == sorted({c for cs in CAPTIONS for c in cs})  # each text once
    assert cache_path(encoder.fingerprint(), captions_fingerprint(CAPTIONS), tmp_path).exists()

    again = CountingEncoder()
    cached = load_or_build_caption_embeddings(CAPTIONS, again, cache_dir=tmp_path)
    assert again.calls == 0
    assert torch.equal(cached.embeddings, built.embeddings) and torch.equal(cached.offsets, built.offsets)


def test_layout_is_flat_rows_with_offsets(tmp_path):
    embeddings = load_or_build_caption_embeddings(CAPTIONS, CountingEncoder(), cache_dir=tmp_path)
    assert isinstance(embeddings, CaptionEmbeddings)
    assert embeddings.embeddings.shape == (6, 8) and embeddings.offsets.tolist() == [0, 2, 3, 6]
    reference = CountingEncoder()
    for i, captions in enumerate(CAPTIONS):
        assert torch.equal(embeddings.of_image(i), reference.encode(captions))


def test_other_captions_or_encoder_miss(tmp_path):
    load_or_build_caption_embeddings(CAPTIONS, CountingEncoder(), cache_dir=tmp_path)
    changed = CountingEncoder()
    load_or_build_caption_embeddings([*CAPTIONS[:2], ["white edges"]], changed, cache_dir=tmp_path)
    other = CountingEncoder("another-encoder")
    load_or_build_caption_embeddings(CAPTIONS, other, cache_dir=tmp_path)
    assert changed.calls == 1 and other.calls == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_a_killed_build_resumes_from_its_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("t2i.data.embedding_cache._ENCODE_CHUNK", 2)  # 5 distinct captions: chunks of 2, 2, 1

    class DiesOnThirdChunk(CountingEncoder):
        def encode(self, texts, batch_size=256):
            if self.calls == 2:
                raise KeyboardInterrupt  # as if killed
            return super().encode(texts, batch_size)

    with pytest.raises(KeyboardInterrupt):
        load_or_build_caption_embeddings(CAPTIONS, DiesOnThirdChunk(), cache_dir=tmp_path)
    path = cache_path("counting-v1", captions_fingerprint(CAPTIONS), tmp_path)
    assert not path.exists() and len(list(path.with_name(f"{path.stem}.chunks").glob("*.safetensors"))) == 2

    other = CountingEncoder("another-encoder")  # another key: nothing of the first build is taken
    load_or_build_caption_embeddings(CAPTIONS, other, cache_dir=tmp_path)
    assert len(other.texts) == 5

    resumed = CountingEncoder()
    embeddings = load_or_build_caption_embeddings(CAPTIONS, resumed, cache_dir=tmp_path)
    assert resumed.texts == ["thin petals"]  # only the unfinished chunk
    reference = CountingEncoder()
    for i, captions in enumerate(CAPTIONS):
        assert torch.equal(embeddings.of_image(i), reference.encode(captions))
    assert path.exists() and not path.with_name(f"{path.stem}.chunks").exists()


def test_dataset_input_and_default_location(tiny_synthetic_dataset):
    test = datasets.load_dataset(str(tiny_synthetic_dataset), split="test")
    encoder = CountingEncoder()
    embeddings = load_or_build_caption_embeddings(test, encoder)
    assert len(embeddings) == len(test) and int(embeddings.offsets[-1]) == 10 * len(test)
    assert cache_path(encoder.fingerprint(), captions_fingerprint(test["captions"])).parent == default_cache_dir()
    assert default_cache_dir().parent == Path(datasets.config.HF_DATASETS_CACHE)
    repeat = CountingEncoder()
    load_or_build_caption_embeddings(test, repeat)
    assert repeat.calls == 0
