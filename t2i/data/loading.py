"""Reading and writing captioned-image datasets in the schema of DESIGN.md.

One row per image: `image` (RGB), `captions` (list[str]), `label`, `class_name`, `file_name`.
Datasets are written as parquet shards under `data/` plus a dataset card, the layout the Hub serves, so
`datasets.load_dataset(folder)` and an upload of the folder to the Hub give the same dataset.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.compute as pc
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value, load_dataset, load_from_disk
from datasets import config as datasets_config

from ..hub import can_only_be_a_path

logger = logging.getLogger(__name__)

ROWS_PER_SHARD = 2000  # ~20-100 MB per shard at 128-500 px: quick to stream, well under the Hub's limits
# Split names `datasets` and the Hub find in shard names by themselves (data/{split}-00000-of-00001.parquet).
_AUTO_DETECTED_SPLITS = {"train", "test", "validation"}


def captioned_features(class_names: Sequence[str], extra: Mapping | None = None) -> Features:
    """Features of the standard schema with the given class names (+ any extra columns)."""
    return Features({
        "image": Image(),
        "captions": List(Value("string")),
        "label": ClassLabel(names=list(class_names)),
        "class_name": Value("string"),
        "file_name": Value("string"),
        **(extra or {}),
    })


def _size_category(n: int) -> str:
    for limit, name in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")]:
        if n < limit:
            return name
    return "100K<n<1M"


def save_captioned_dataset(
    splits: Mapping[str, list[dict]],
    out_dir: str | os.PathLike,
    features: Features,
    card: str,
    *,
    pretty_name: str,
    license: str,
    tags: Sequence[str] = (),
    rows_per_shard: int = ROWS_PER_SHARD,
) -> Path:
    """Write `{split: rows}` as `out_dir/data/{split}-XXXXX-of-YYYYY.parquet` and `out_dir/README.md`.

    `card` is the markdown body of the dataset card; the YAML header (split patterns, license, ...) is
    added here. The output depends only on the inputs, byte for byte.
    """
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for stale in (out / "data").glob("*-of-*.parquet"):  # shards of an earlier, differently sized build
        stale.unlink()
    for split, rows in splits.items():
        num_shards = max(1, math.ceil(len(rows) / rows_per_shard))
        for shard in range(num_shards):
            part = rows[shard * rows_per_shard : (shard + 1) * rows_per_shard]
            path = out / "data" / f"{split}-{shard:05d}-of-{num_shards:05d}.parquet"
            Dataset.from_list(part, features=features).to_parquet(str(path))
    header = {
        "pretty_name": pretty_name,
        "license": license,
        "language": ["en"],
        "task_categories": ["text-to-image"],
        "tags": list(tags),
        "size_categories": [_size_category(sum(len(rows) for rows in splits.values()))],
    }
    if not set(splits) <= _AUTO_DETECTED_SPLITS:
        # A `configs:` block makes `datasets` key its cache on the folder's name alone, so a plain
        # `load_dataset(folder)` would serve stale rows after a rebuild: written only for split names it can't detect.
        header["configs"] = [{
            "config_name": "default",
            "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits],
        }]
    readme = f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n{card}"
    (out / "README.md").write_text(readme, encoding="utf-8")
    logger.info("wrote %s", ", ".join(f"{len(rows)} {split}" for split, rows in splits.items()))
    return out


def push_dataset_folder(out_dir: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a folder written by `save_captioned_dataset` (shards + card) as a Hub dataset; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(out_dir), allow_patterns=["README.md", "data/*"])
    return f"https://huggingface.co/datasets/{repo_id}"


def load_captioned_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    image_column: str = "image",
    caption_column: str = "captions",
    cache_dir: str | None = None,
) -> Dataset:
    """Load one split of a captioned-image dataset with normalized `image` and `captions` columns.

    `name_or_path` is a Hub dataset id, a local folder of parquet files (like `python -m t2i.datasets synth`
    writes), a `save_to_disk` folder, or an imagefolder with `metadata.jsonl`. `caption_column` may hold
    one string or a list of strings per image. Other columns (`label`, ...) are kept.

    A local folder is always read as it is on disk now: its cache is keyed by `local_files_fingerprint`.

    Raises:
        FileNotFoundError: `name_or_path` is neither a local folder nor a Hub dataset that can be reached (a file
            is refused at once). A name that can only be a path (starts with ".", "/" or "~", or has more than one
            "/") is never sent to the Hub.
    """
    if not os.fspath(name_or_path).strip():
        raise ValueError("the dataset name is empty: give a folder (python -m t2i.datasets synth --out DIR) or a Hub id")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        _check_hub_dataset(os.fspath(name_or_path))
    elif not path.is_dir():  # else read as a Hub id (a minute of retries) or, for a .py file, a dataset script
        raise FileNotFoundError(f"{name_or_path} is a file, not a dataset folder: give the folder "
                                "`python -m t2i.datasets synth --out DIR` wrote, or a Hub dataset id (org/name)")
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []  # walked once for both checks
    if path.is_dir() and not files:
        raise FileNotFoundError(f"{name_or_path}: the folder is empty. Make the synthetic set there with "
                                f"`python -m t2i.datasets synth --out {name_or_path}`.")
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"split {split!r} not in {path} (has {list(loaded)})")
            loaded = loaded[split]
        dataset = loaded
    elif path.is_dir():  # parquet folders and imagefolders go through the packaged builders
        if not any(p.suffix in (".parquet", ".arrow") or p.name in ("metadata.jsonl", "metadata.csv") for p in files):
            # else `datasets` reads any folder, as JSON or plain images, and fails later on a split or a column
            raise FileNotFoundError(f"{name_or_path}: not a dataset folder (no parquet or arrow files, no save_to_disk "
                                    "state, no imagefolder metadata.jsonl). Make the synthetic set with "
                                    "`python -m t2i.datasets synth --out DIR`.")
        # `datasets` keys a local folder's cache on its name and its card's data_files patterns, not on the files
        # (with a `configs:` block), so a rebuilt folder or another folder of the same name would load old rows.
        # Keyed here on every file's path, size and mtime, a cache can only ever hold what is on disk now.
        base = Path(cache_dir or datasets_config.HF_DATASETS_CACHE)
        dataset = load_dataset(str(path.resolve()), split=split, cache_dir=str(base / "t2i_local" / local_files_fingerprint(path)))
    else:  # a Hub id: revisions key the cache
        dataset = load_dataset(str(name_or_path), split=split, cache_dir=cache_dir)
    return normalize_captioned_dataset(dataset, image_column, caption_column)


def _check_hub_dataset(name: str) -> None:
    # Without this, a mistyped or not-yet-built folder is sent to the Hub, retried for over a minute, and ends in
    # a ConnectionError traceback that never says the folder is missing.
    make_it = f"Make the synthetic set with `python -m t2i.datasets synth --out {name}`, or give a Hub dataset id (org/name)."
    if can_only_be_a_path(name):
        raise FileNotFoundError(f"{name}: no such dataset folder. {make_it}")
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE or datasets_config.HF_DATASETS_OFFLINE:
        return  # offline mode: `datasets` looks in its own cache
    try:
        HfApi().dataset_info(name, revision="main", timeout=10)  # the revision route: mirrors like olah serve it
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status is not None and (status >= 500 or status == 429):  # the Hub is there but busy: let `datasets` try
            logger.warning("the Hub answered %s for %s; trying `datasets` (and its cache) anyway", status, name)
            return
        raise FileNotFoundError(f"{name}: no such local folder, and not a Hub dataset ({type(error).__name__}). {make_it}") from error
    except ValueError as error:  # not a valid repo id
        raise FileNotFoundError(f"{name}: no such local folder, and not a Hub dataset ({type(error).__name__}). {make_it}") from error
    except Exception as error:  # connection refused, DNS failure, time-out (httpx errors are not OSErrors)
        raise FileNotFoundError(f"{name}: no such local folder, and the Hub could not be reached ({error.__class__.__name__}). {make_it}") from error


def local_files_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over every file under `folder`: its absolute path, size in bytes and modification time (ns)."""
    digest = hashlib.sha256()
    root = Path(folder).resolve()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.relative_to(root).parts):
        stat = file.stat()
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def normalize_captioned_dataset(dataset: Dataset, image_column: str = "image", caption_column: str = "captions") -> Dataset:
    """Rename the image/caption columns to `image`/`captions`, make captions a list of stripped, non-empty
    strings, and drop (with a warning) rows that have no caption left."""
    for column in (image_column, caption_column):
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} not found; the dataset has {dataset.column_names}")
    for column, standard in ((image_column, "image"), (caption_column, "captions")):
        if column != standard:
            if standard in dataset.column_names:
                dataset = dataset.remove_columns(standard)
            dataset = dataset.rename_column(column, standard)
    if not isinstance(dataset.features["image"], Image):  # e.g. a column of file paths
        dataset = dataset.cast_column("image", Image())

    if _captions_need_cleaning(dataset):
        features = dataset.features.copy()
        features["captions"] = List(Value("string"))
        dataset = dataset.map(_clean_captions, batched=True, input_columns=["captions"], features=features, desc="captions")
        before = len(dataset)
        dataset = dataset.filter(lambda captions: len(captions) > 0, input_columns=["captions"], desc="empty rows")
        if len(dataset) < before:
            logger.warning("dropped %d of %d rows that have no non-empty caption", before - len(dataset), before)
    return dataset


def _clean_captions(captions: list) -> dict[str, list[list[str]]]:
    cleaned = []
    for value in captions:
        values = [value] if isinstance(value, str) else (value or [])
        cleaned.append([c.strip() for c in values if c and c.strip()])
    return {"captions": cleaned}


def _captions_need_cleaning(dataset: Dataset) -> bool:
    """Whether any caption is a bare string, empty, padded with spaces, or a row has none.

    Checked on the Arrow column, so clean datasets (the usual case) are not rewritten into the cache.
    """
    feature = dataset.features["captions"]
    if not (isinstance(feature, List) and feature.feature == Value("string")):
        return True
    column = dataset.data.column("captions")
    if column.null_count or pc.any(pc.equal(pc.list_value_length(column), 0)).as_py():
        return True
    flat = pc.list_flatten(column)
    if len(flat) == 0:
        return True
    return flat.null_count > 0 or not pc.all(pc.equal(pc.utf8_trim_whitespace(flat), flat)).as_py() or pc.any(
        pc.equal(pc.utf8_length(flat), 0)
    ).as_py()
