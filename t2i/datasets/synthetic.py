"""Synthetic captioned flowers: 102 species with known attributes, rendered procedurally, with Reed-style captions.

Every image records its attributes, so text-image agreement can be measured objectively. The 102 species
(classes) are a fixed taxonomy, independent of the generation seed: 82 `train` classes and 20 `test`
classes, where every test class is an unseen combination of attribute values that all occur in training.

    python -m t2i.datasets synth --out data/synthetic-flowers --num-images 8189 --seed 0 --resolution 128

Generation is deterministic: image i is drawn from seeds derived from (seed, i) only, and workers return
results in order, so the same arguments give byte-identical parquet files.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Features, Value

from ..data.loading import captioned_features, save_captioned_dataset
from .synthetic_captions import caption_attributes, make_captions
from .synthetic_render import CENTER_PALETTE, PETAL_PALETTE, encode_jpeg, render_flower

__all__ = [
    "ATTRIBUTE_VALUES", "CLASS_NAMES", "SPECIES", "TEST_CLASSES", "TRAIN_CLASSES", "Species",
    "caption_attributes", "generate_synthetic_dataset", "make_example", "map_in_order", "petal_count_word",
    "random_attributes", "render_random_flower",
]

PETAL_COLORS = tuple(PETAL_PALETTE)
PATTERNS = ("none", "edges", "stripes", "spots")
PETAL_SHAPES = ("round", "oval", "pointed", "thin", "heart")
COUNT_BINS: dict[str, tuple[int, int]] = {
    "three": (3, 3), "four": (4, 4), "five": (5, 5), "six": (6, 6), "several": (7, 11), "many": (12, 30),
}
CENTER_COLORS = tuple(CENTER_PALETTE)
CENTER_SIZES = ("small", "large")

ATTRIBUTE_VALUES: dict[str, list] = {
    "petal_color": list(PETAL_COLORS),
    "secondary_color": ["none", *PETAL_COLORS],
    "pattern": list(PATTERNS),
    "petal_shape": list(PETAL_SHAPES),
    "petal_count": list(range(3, 31)),
    "petal_count_word": list(COUNT_BINS),
    "center_color": list(CENTER_COLORS),
    "center_size": list(CENTER_SIZES),
    "num_layers": [1, 2],
}
"""Attribute name -> all values it takes. `petal_count` is the number of petals per layer."""

ATTRIBUTE_FEATURES = Features(
    {name: Value("int32") if name in ("petal_count", "num_layers") else Value("string") for name in ATTRIBUTE_VALUES}
)

# Shapes only come with counts that read well at 64 px (no 30 overlapping heart-shaped petals).
_COUNTS_FOR_SHAPE = {
    "round": ("three", "four", "five", "six", "several"),
    "oval": tuple(COUNT_BINS),
    "pointed": tuple(COUNT_BINS),
    "thin": ("several", "many"),
    "heart": ("four", "five", "six"),
}
_GENUS = {"three": "trillium", "four": "cress", "five": "primrose", "six": "lily", "several": "anemone", "many": "daisy"}
_SHAPE_NAME = {"round": "cup", "oval": "oval-petal", "pointed": "star", "thin": "needle", "heart": "heart-petal"}
_PATTERN_NAME = {"edges": "edged", "stripes": "striped", "spots": "spotted"}
_SPECIES_SEED = 2016  # the taxonomy is part of the benchmark's definition, so it never depends on --seed
NUM_CLASSES, NUM_TEST_CLASSES = 102, 20


def petal_count_word(count: int) -> str:
    """The caption word for a petal count: "three" .. "six", "several" (7-11) or "many" (12-30)."""
    for word, (low, high) in COUNT_BINS.items():
        if low <= count <= high:
            return word
    raise ValueError(f"petal count {count} is outside 3..30")


@dataclass(frozen=True)
class Species:
    """A class: a fixed combination of attribute values; images vary in petal count (within the range),
    colour shade, pose, background and clutter."""

    label: int
    name: str
    split: str
    petal_color: str
    secondary_color: str
    pattern: str
    petal_shape: str
    petal_count_word: str
    petal_count_range: tuple[int, int]
    center_color: str
    center_size: str
    num_layers: int

    def sample_attributes(self, rng: np.random.Generator) -> dict:
        """Attributes of one image of this species (the `attributes` column)."""
        values = asdict(self)
        attributes = {name: values[name] for name in ATTRIBUTE_VALUES if name != "petal_count"}
        attributes["petal_count"] = int(rng.integers(self.petal_count_range[0], self.petal_count_range[1] + 1))
        return {name: attributes[name] for name in ATTRIBUTE_VALUES}


def _combination(rng: np.random.Generator) -> tuple | None:
    def pick(options):
        return options[rng.integers(len(options))]

    shape = pick(PETAL_SHAPES)
    pattern = PATTERNS[rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])]
    if shape == "thin" and pattern == "edges":  # an edge band would cover a needle petal entirely
        return None
    color = pick(PETAL_COLORS)
    secondary = "none" if pattern == "none" else pick([c for c in PETAL_COLORS if c != color])
    center = pick([c for c in CENTER_COLORS if c != color])
    layers = 1 if rng.random() < 0.6 else 2
    return (color, secondary, pattern, shape, pick(_COUNTS_FOR_SHAPE[shape]), center, pick(CENTER_SIZES), layers)


def _make_species() -> tuple[Species, ...]:
    rng = np.random.default_rng(_SPECIES_SEED)
    combos: list[tuple] = []
    while len(combos) < NUM_CLASSES:
        combo = _combination(rng)
        # Classes differ in at least two attributes, so no class is a one-word edit of another.
        if combo and all(sum(a != b for a, b in zip(combo, other)) >= 2 for other in combos):
            combos.append(combo)
    while True:  # test classes: unseen combinations whose every value occurs in some train class
        test = set(rng.choice(NUM_CLASSES, NUM_TEST_CLASSES, replace=False).tolist())
        seen = [{c[i] for k, c in enumerate(combos) if k not in test} for i in range(len(combos[0]))]
        if all(c[i] in seen[i] for k, c in enumerate(combos) if k in test for i in range(len(c))):
            break

    species, used_names = [], set()
    for label, (color, secondary, pattern, shape, count_word, center, size, layers) in enumerate(combos):
        low, high = COUNT_BINS[count_word]
        if high > low:  # a species spans part of its bin
            width = 2 if count_word == "several" else 6
            low = int(rng.integers(low, high - width + 1))
            high = low + width
        prefix = f"{secondary}-{_PATTERN_NAME[pattern]} " if pattern != "none" else ""
        name = f"{'double ' if layers == 2 else ''}{prefix}{color} {_SHAPE_NAME[shape]} {_GENUS[count_word]}"
        base, k = name, 2
        while name in used_names:
            name, k = f"{base} {k}", k + 1
        used_names.add(name)
        species.append(Species(
            label, name, "test" if label in test else "train", color, secondary, pattern, shape, count_word,
            (low, high), center, size, layers,
        ))
    return tuple(species)


SPECIES: tuple[Species, ...] = _make_species()
CLASS_NAMES: list[str] = [s.name for s in SPECIES]
TRAIN_CLASSES: tuple[int, ...] = tuple(s.label for s in SPECIES if s.split == "train")
TEST_CLASSES: tuple[int, ...] = tuple(s.label for s in SPECIES if s.split == "test")


def assign_labels(num_images: int, seed: int) -> np.ndarray:
    """Class of each image index: unequal class sizes (like Oxford-102's 40-258), shuffled."""
    rng = np.random.default_rng([seed, 1])
    quota = rng.uniform(0.4, 1.6, NUM_CLASSES)
    quota *= num_images / quota.sum()
    counts = np.floor(quota).astype(int)
    counts[np.argsort(counts - quota, kind="stable")[: num_images - counts.sum()]] += 1  # largest remainders
    labels = np.repeat(np.arange(NUM_CLASSES), counts)
    rng.shuffle(labels)
    return labels


def make_example(seed: int, index: int, label: int, resolution: int) -> dict:
    """Row `index` of the dataset generated with `seed`: a pure function of its arguments."""
    rng = np.random.default_rng([seed, 0, index])
    attributes = SPECIES[label].sample_attributes(rng)
    pixels = render_flower(attributes, rng, resolution)
    file_name = f"image_{index + 1:05d}.jpg"
    return {
        "image": {"bytes": encode_jpeg(pixels), "path": file_name},
        # A separate stream, so captions stay the same when the renderer changes.
        "captions": make_captions(attributes, np.random.default_rng([seed, 2, index])),
        "label": label,
        "class_name": SPECIES[label].name,
        "file_name": file_name,
        "attributes": attributes,
    }


def _make_example_job(job: tuple[int, int, int, int]) -> dict:
    return make_example(*job)


def map_in_order(function: Callable, jobs: Sequence, num_proc: int | None = None) -> list:
    """[function(job) for job in jobs], on `num_proc` worker processes (default: all cores for 64+ jobs)."""
    if num_proc is None:  # all cores, unless the job is too small to repay starting workers
        num_proc = len(os.sched_getaffinity(0)) if len(jobs) >= 64 else 1
    if num_proc <= 1:
        return [function(job) for job in jobs]
    # fork: workers inherit the imported modules instead of re-importing torch & co.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(num_proc) as pool:
        return list(pool.imap(function, jobs, chunksize=16))  # imap keeps the order


def _species_combination(species: Species) -> tuple:
    return (species.petal_color, species.secondary_color, species.pattern, species.petal_shape, species.petal_count_word,
            species.center_color, species.center_size, species.num_layers)


def random_attributes(rng: np.random.Generator, exclude: Sequence[Species] = ()) -> dict:
    """Attributes of one flower with every value drawn independently of the others (within the renderer's
    valid combinations), never the combination of a species in `exclude`.

    Unlike the 102 species, these decorrelate the attributes: a model trained on them cannot read one attribute
    off another, which is what the evaluation oracle needs to be right on unseen combinations.
    """
    excluded = {_species_combination(s) for s in exclude}
    while True:
        combo = _combination(rng)
        if combo is not None and combo not in excluded:
            break
    color, secondary, pattern, shape, count_word, center, size, layers = combo
    low, high = COUNT_BINS[count_word]
    attributes = {
        "petal_color": color, "secondary_color": secondary, "pattern": pattern, "petal_shape": shape,
        "petal_count": int(rng.integers(low, high + 1)), "petal_count_word": count_word, "center_color": center,
        "center_size": size, "num_layers": layers,
    }
    return {name: attributes[name] for name in ATTRIBUTE_VALUES}


def render_random_flower(seed: int, index: int, resolution: int = 128, exclude_split: str | None = "test") -> tuple[bytes, dict]:
    """JPEG bytes and attributes of flower `index` of a decorrelated set (see `random_attributes`), whose
    combinations avoid every species of `exclude_split`; a pure function of its arguments."""
    rng = np.random.default_rng([seed, 3, index])
    attributes = random_attributes(rng, [s for s in SPECIES if s.split == exclude_split])
    return encode_jpeg(render_flower(attributes, rng, resolution)), attributes


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 8189,
    seed: int = 0,
    resolution: int = 128,
    num_proc: int | None = None,
) -> Path:
    """Render the dataset and write it to `out_dir` as parquet shards + dataset card; returns `out_dir`.

    `datasets.load_dataset(out_dir)` loads it with `train` and `test` splits.
    """
    labels = assign_labels(num_images, seed)
    is_test = np.isin(labels, TEST_CLASSES)
    order = np.concatenate([np.flatnonzero(~is_test), np.flatnonzero(is_test)])
    jobs = [(seed, int(i), int(labels[i]), resolution) for i in order]
    rows = map_in_order(_make_example_job, jobs, num_proc)
    num_train = int((~is_test).sum())
    splits = {"train": rows[:num_train], "test": rows[num_train:]}
    features = captioned_features(CLASS_NAMES, {"attributes": ATTRIBUTE_FEATURES})
    card = _dataset_card(num_images, seed, resolution, {k: len(v) for k, v in splits.items()})
    return save_captioned_dataset(
        splits, out_dir, features, card, pretty_name="Synthetic captioned flowers", license="cc0-1.0",
        tags=["synthetic", "flowers", "text-to-image", "attributes"],
    )


def _dataset_card(num_images: int, seed: int, resolution: int, split_sizes: dict[str, int]) -> str:
    vocab = "\n".join(f"- `{name}`: {', '.join(map(str, values))}" for name, values in ATTRIBUTE_VALUES.items())
    classes = "\n".join(
        f"| {s.label} | {s.name} | {s.split} | {s.petal_color} | {s.secondary_color} | {s.pattern} | {s.petal_shape} "
        f"| {s.petal_count_range[0]}-{s.petal_count_range[1]} | {s.center_color} | {s.center_size} | {s.num_layers} |"
        for s in SPECIES
    )
    sizes = ", ".join(f"{n} {split}" for split, n in split_sizes.items())
    return f"""# Synthetic captioned flowers

Procedurally rendered flowers with known attributes and 10 Reed-style captions per image, made by the
`t2i` project as a stand-in benchmark for Oxford-102 + Reed et al. (2016) captions. **These are not
Oxford-102 images**; results on this set must never be reported as Oxford-102 results.

Generated with `python -m t2i.datasets synth --num-images {num_images} --seed {seed} --resolution {resolution}`:
{sizes} images, {resolution}x{resolution} JPEG.

## Schema

`image`, `captions` (10 strings), `label` (class index), `class_name`, `file_name`, and `attributes`
(the true attribute values of this image). Every caption mentions a random subset of the true attributes
and never a false one.

## Split

{NUM_CLASSES} classes (species); {NUM_CLASSES - NUM_TEST_CLASSES} `train` classes and {NUM_TEST_CLASSES} `test`
classes. Test classes are unseen combinations of attribute values that all occur in training, so the test
split measures compositional generalisation (Reed's zero-shot protocol).

## Attribute values

{vocab}

`petal_count` is the number of petals per layer; `petal_count_word` is its caption word.

## Classes

| label | name | split | petal colour | secondary | pattern | shape | petals | centre colour | centre size | layers |
|---|---|---|---|---|---|---|---|---|---|---|
{classes}
"""
