"""Synthetic captioned flowers: determinism, schema, split, caption truthfulness."""

from pathlib import Path

import datasets
import numpy as np
import pytest

from t2i.datasets.synthetic import (
    ATTRIBUTE_VALUES,
    CLASS_NAMES,
    SPECIES,
    TEST_CLASSES,
    TRAIN_CLASSES,
    caption_attributes,
    generate_synthetic_dataset,
    petal_count_word,
    random_attributes,
    render_random_flower,
)

CLASS_ATTRIBUTES = (
    "petal_color", "secondary_color", "pattern", "petal_shape", "petal_count_word", "center_color", "center_size", "num_layers",
)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tiny_synthetic_dataset):
    return datasets.load_dataset(str(tiny_synthetic_dataset))


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", num_images=12, seed=3, resolution=32, num_proc=1)
    again = generate_synthetic_dataset(tmp_path / "b", num_images=12, seed=3, resolution=32, num_proc=2)
    other = generate_synthetic_dataset(tmp_path / "c", num_images=12, seed=4, resolution=32, num_proc=1)
    assert _files(first) == _files(again)  # also: worker processes do not change the output
    assert _files(first)["data/train-00000-of-00001.parquet"] != _files(other)["data/train-00000-of-00001.parquet"]


def test_schema(tiny, tiny_synthetic_dataset):
    assert set(tiny) == {"train", "test"}
    assert len(tiny["train"]) + len(tiny["test"]) == 200
    features = tiny["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert features["captions"] == datasets.List(datasets.Value("string"))
    assert features["label"].names == CLASS_NAMES
    assert set(features["attributes"]) == set(ATTRIBUTE_VALUES)
    row = tiny["train"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    assert (tiny_synthetic_dataset / "README.md").read_text().startswith("---\n")
    for split in tiny.values():
        for row in split.remove_columns("image"):
            assert len(row["captions"]) == 10 and all(row["captions"])
            assert row["class_name"] == CLASS_NAMES[row["label"]]
            attributes, species = row["attributes"], SPECIES[row["label"]]
            for name, value in attributes.items():
                assert value in ATTRIBUTE_VALUES[name], (name, value)
            assert all(attributes[name] == getattr(species, name) for name in CLASS_ATTRIBUTES)
            assert attributes["petal_count_word"] == petal_count_word(attributes["petal_count"])
            low, high = species.petal_count_range
            assert low <= attributes["petal_count"] <= high


def test_split_is_compositional_and_disjoint(tiny):
    assert len(TRAIN_CLASSES) == 82 and len(TEST_CLASSES) == 20
    assert set(TRAIN_CLASSES).isdisjoint(TEST_CLASSES) and set(TRAIN_CLASSES) | set(TEST_CLASSES) == set(range(102))
    combination = {s.label: tuple(getattr(s, name) for name in CLASS_ATTRIBUTES) for s in SPECIES}
    train_combinations = {combination[label] for label in TRAIN_CLASSES}
    for label in TEST_CLASSES:
        assert combination[label] not in train_combinations  # unseen combination ...
        for i, value in enumerate(combination[label]):  # ... of values that all occur in training
            assert any(c[i] == value for c in train_combinations), (CLASS_ATTRIBUTES[i], value)
    assert set(tiny["train"]["label"]) <= set(TRAIN_CLASSES)
    assert set(tiny["test"]["label"]) <= set(TEST_CLASSES)
    assert set(tiny["train"]["file_name"]).isdisjoint(tiny["test"]["file_name"])


def test_every_caption_states_only_true_attributes(tiny):
    mentioned = set()
    for split in tiny.values():
        for row in split.remove_columns("image"):
            for caption in row["captions"]:
                stated = caption_attributes(caption)
                assert stated, caption
                for name, values in stated.items():
                    assert values == {row["attributes"][name]}, (caption, name, values, row["attributes"])
                mentioned |= set(stated)
    assert mentioned == set(CLASS_ATTRIBUTES)  # the check above covered every kind of attribute


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("this flower has five pointed purple petals and a yellow center",
         {"petal_count_word": {"five"}, "petal_shape": {"pointed"}, "petal_color": {"purple"}, "center_color": {"yellow"}}),
        ("the petals are pink with white edges", {"petal_color": {"pink"}, "secondary_color": {"white"}, "pattern": {"edges"}}),
        ("a flower with many thin yellow petals surrounding a dark brown disc",
         {"petal_count_word": {"many"}, "petal_shape": {"thin"}, "petal_color": {"yellow"}, "center_color": {"brown"}}),
        ("the center of this flower is large and black", {"center_size": {"large"}, "center_color": {"black"}}),
        ("this flower has petals that are red in two layers", {"petal_color": {"red"}, "num_layers": {2}}),
        ("white heart-shaped petals edged in purple",
         {"petal_color": {"white"}, "petal_shape": {"heart"}, "pattern": {"edges"}, "secondary_color": {"purple"}}),
        ("the petals are blue and red", {"petal_color": {"blue", "red"}}),  # a contradiction shows as two values
    ],
)
def test_caption_attributes(caption, expected):
    assert caption_attributes(caption) == expected


def test_random_attributes_are_decorrelated_and_avoid_test_combinations():
    rng = np.random.default_rng(0)
    test_species = [s for s in SPECIES if s.split == "test"]
    test_combinations = {tuple(getattr(s, name) for name in CLASS_ATTRIBUTES) for s in test_species}
    draws = [random_attributes(rng, test_species) for _ in range(3000)]
    assert not {tuple(d[name] for name in CLASS_ATTRIBUTES) for d in draws} & test_combinations
    for d in draws:
        assert list(d) == list(ATTRIBUTE_VALUES) and petal_count_word(d["petal_count"]) == d["petal_count_word"]
        assert (d["secondary_color"] == "none") == (d["pattern"] == "none") and d["center_color"] != d["petal_color"]
    # Decorrelated: every petal colour comes with (almost) every other centre colour.
    for color in ATTRIBUTE_VALUES["petal_color"]:
        centres = {d["center_color"] for d in draws if d["petal_color"] == color}
        assert len(centres) >= len(ATTRIBUTE_VALUES["center_color"]) - 1, (color, centres)


def test_render_random_flower_is_a_pure_function():
    jpeg, attributes = render_random_flower(0, 7, 64)
    assert (jpeg, attributes) == render_random_flower(0, 7, 64)
    assert jpeg[:2] == b"\xff\xd8" and render_random_flower(0, 8, 64)[0] != jpeg
