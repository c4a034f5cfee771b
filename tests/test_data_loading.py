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
