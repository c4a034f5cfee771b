"""`load_captioned_dataset` on each input form: Hub id, parquet folder, save_to_disk folder, imagefolder."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from t2i.data import load_captioned_dataset


def _assert_normalized(dataset: datasets.Dataset, rows: int) -> None:
    assert len(dataset) == rows
    assert isinstance(dataset.features["image"], datasets.Image)
    assert dataset.features["captions"] == datasets.List(datasets.Value("string"))
    row = dataset[0]
    assert isinstance(row["image"], Image.Image)
    assert row["captions"] and all(isinstance(c, str) and c.strip() == c and c for c in row["captions"])


def test_parquet_folder(tiny_synthetic_dataset):
    test = load_captioned_dataset(tiny_synthetic_dataset, split="test")
    _assert_normalized(test, len(datasets.load_dataset(str(tiny_synthetic_dataset), split="test")))
    assert {"label", "class_name", "file_name", "attributes"} <= set(test.column_names)


def test_hub_id(tiny_synthetic_dataset, loopback_hub):
    loopback_hub.publish(tiny_synthetic_dataset, "t2i-tests/synthetic-flowers", repo_type="dataset")
    train = load_captioned_dataset("t2i-tests/synthetic-flowers", split="train")
    local = load_captioned_dataset(tiny_synthetic_dataset, split="train")
    _assert_normalized(train, len(local))
    assert train["file_name"] == local["file_name"] and train[0]["captions"] == local[0]["captions"]


def test_save_to_disk_folders_with_other_column_names(tiny_synthetic_dataset, tmp_path):
    original = datasets.load_dataset(str(tiny_synthetic_dataset))
    renamed = original.rename_columns({"image": "img", "captions": "descriptions"})
    renamed.save_to_disk(str(tmp_path / "dict"))
    renamed["test"].save_to_disk(str(tmp_path / "single"))
    for folder in ("dict", "single"):
        loaded = load_captioned_dataset(tmp_path / folder, split="test", image_column="img", caption_column="descriptions")
        _assert_normalized(loaded, len(original["test"]))
        assert loaded["captions"] == original["test"]["captions"]
    with pytest.raises(ValueError, match="split 'validation'"):
        load_captioned_dataset(tmp_path / "dict", split="validation", image_column="img")


@pytest.mark.parametrize("caption_kind", ["string", "list"])
def test_imagefolder_with_metadata(tmp_path, caption_kind):
    texts = ["a red flower", "  a flower with five petals  ", "", "a tiny white flower"]
    with open(tmp_path / "metadata.jsonl", "w") as metadata:
        for i, text in enumerate(texts):
            pixels = np.full((20, 30, 3), 40 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"flower_{i}.png")
            value = text if caption_kind == "string" else [text, "second caption"]
            metadata.write(json.dumps({"file_name": f"flower_{i}.png", "text": value}) + "\n")
    loaded = load_captioned_dataset(tmp_path, split="train", caption_column="text", cache_dir=str(tmp_path / "cache"))
    if caption_kind == "string":  # a single string works like a one-caption list; the empty row is dropped
        _assert_normalized(loaded, 3)
        assert sorted(loaded["captions"]) == [["a flower with five petals"], ["a red flower"], ["a tiny white flower"]]
    else:  # empty captions are removed from the lists
        _assert_normalized(loaded, 4)
        assert sorted(len(c) for c in loaded["captions"]) == [1, 2, 2, 2]


def test_missing_column_is_named(tiny_synthetic_dataset):
    with pytest.raises(ValueError, match="'text' not found"):
        load_captioned_dataset(tiny_synthetic_dataset, split="test", caption_column="text")


# ----------------------------------------------------------------------------------------------------------------
# Stale caches: every load must read what is on disk now (Hardening, item 8).


def _file_names(folder, split: str) -> list[str]:
    return sorted(load_captioned_dataset(folder, split=split)["file_name"])


def _expected_file_names(folder, split: str) -> list[str]:
    import pyarrow.parquet as pq

    return sorted(n for f in sorted((folder / "data").glob(f"{split}-*.parquet")) for n in pq.read_table(f, columns=["file_name"])["file_name"].to_pylist())


def test_two_folders_with_one_name_load_their_own_rows(tmp_path):
    from t2i.datasets import generate_synthetic_dataset

    small = generate_synthetic_dataset(tmp_path / "a" / "ds", num_images=40, seed=1, resolution=64, num_proc=1)
    large = generate_synthetic_dataset(tmp_path / "b" / "ds", num_images=90, seed=2, resolution=64, num_proc=1)
    for folder in (small, large, small):  # in both orders: neither may be served from the other's cache
        for split in ("train", "test"):
            assert _file_names(folder, split) == _expected_file_names(folder, split)
    assert len(load_captioned_dataset(large, "train")) + len(load_captioned_dataset(large, "test")) == 90
    # Plain `datasets.load_dataset` reads the folder's own rows too: the card carries no `configs:` block that
    # would key its cache on the folder's name alone.
    assert len(datasets.load_dataset(str(large), split="train")) == len(_expected_file_names(large, "train"))
    assert "configs:" not in (large / "README.md").read_text()


def test_a_folder_rebuilt_in_place_loads_the_new_rows(tmp_path):
    from t2i.datasets import generate_synthetic_dataset

    folder = generate_synthetic_dataset(tmp_path / "ds", num_images=40, seed=1, resolution=64, num_proc=1)
    first = load_captioned_dataset(folder, "train")
    first_captions = first["captions"]
    for num_images, seed in ((60, 1), (60, 5)):  # another size, then the same size with another seed
        generate_synthetic_dataset(folder, num_images=num_images, seed=seed, resolution=64, num_proc=1)
        rebuilt = load_captioned_dataset(folder, "train")
        assert sorted(rebuilt["file_name"]) == _expected_file_names(folder, "train")
        assert rebuilt["captions"] != first_captions
        first_captions = rebuilt["captions"]


def test_local_fingerprint_follows_every_file(tmp_path):
    import os

    from t2i.data.loading import local_files_fingerprint

    (tmp_path / "data").mkdir()
    shard = tmp_path / "data" / "train-00000-of-00001.parquet"
    shard.write_bytes(b"x" * 10)
    first = local_files_fingerprint(tmp_path)
    assert local_files_fingerprint(tmp_path) == first
    shard.write_bytes(b"y" * 11)  # size
    second = local_files_fingerprint(tmp_path)
    os.utime(shard, ns=(1, 1))  # modification time only
    third = local_files_fingerprint(tmp_path)
    (tmp_path / "data" / "test-00000-of-00001.parquet").write_bytes(b"")  # a new file
    assert len({first, second, third, local_files_fingerprint(tmp_path)}) == 4


@pytest.mark.parametrize("name", ["data/synthetic-flowers", "./missing", "/no/such/folder", "a/b/c"])
def test_a_missing_folder_is_a_clear_error_not_a_hub_lookup(name, monkeypatch):
    import time

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: a refused connection, at once
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"python -m t2i\.datasets synth --out"):
        load_captioned_dataset(name, split="train")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("name", ["README.md", "client.py", "flowers.parquet"])
def test_a_file_is_refused_as_a_dataset_at_once(name, tmp_path, monkeypatch):
    (tmp_path / name).write_text("print('a dataset script would run here')\n")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)  # a bare file name could also be a Hub id
    with pytest.raises(FileNotFoundError, match=f"{name} is a file, not a dataset folder"):
        load_captioned_dataset(name, split="train")


def test_a_folder_that_holds_no_dataset_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")  # e.g. a model folder given as --dataset
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a dataset folder"):
        load_captioned_dataset(tmp_path, split="test")
