"""Benchmark scripts whose output docs/results.md quotes: they run end to end on a tiny set and report what they claim."""

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unconditional_baseline_trains_scores_and_draws_grids(tiny_synthetic_dataset, tmp_path):
    baseline = load_script("unconditional_baseline")
    out = tmp_path / "dcgan"
    summary = baseline.main(["--dataset", str(tiny_synthetic_dataset), "--output_dir", str(out), "--max_train_steps", "4",
                             "--train_batch_size", "8", "--ngf", "8", "--ndf", "8", "--grid_steps", "2", "--num_samples", "16"])
    assert summary["steps"] == 4 and [entry["step"] for entry in summary["log"]] == [2, 4]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    grids = sorted(path.name for path in out.glob("samples_*.png"))
    assert grids == ["samples_000002.png", "samples_000004.png"]
    grid = np.asarray(Image.open(out / grids[-1]))
    assert grid.shape == (512, 512, 3) and grid.std() > 0  # 8 × 8 images of 64 px, not a blank canvas
    # The Fréchet ratio is the evaluation's: a distance over the real train-vs-test distance, both positive.
    assert summary["oracle_frechet_distance"] > 0 and summary["real_train_vs_real_test"] > 0
    assert np.isclose(summary["oracle_frechet_distance_over_real"], summary["oracle_frechet_distance"] / summary["real_train_vs_real_test"])
    assert 0 <= summary["flower_pixel_share"] <= 1 and summary["roughness"] > 0


def test_unconditional_baseline_refuses_bad_input_before_any_work(tiny_synthetic_dataset, tmp_path, capsys):
    import pytest

    baseline = load_script("unconditional_baseline")
    out = tmp_path / "never"
    for flags, message in ((["--grid_steps", "0"], "--grid_steps must be ≥ 1"), (["--max_train_steps", "0"], "--max_train_steps must be ≥ 1"),
                           (["--num_samples", "1"], "--num_samples must be ≥ 2")):
        with pytest.raises(SystemExit):
            baseline.main(["--dataset", str(tiny_synthetic_dataset), "--output_dir", str(out), *flags])
        assert message in capsys.readouterr().err
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    for parquet in tiny_synthetic_dataset.rglob("train*.parquet"):
        (train_only / parquet.name).write_bytes(parquet.read_bytes())
    for dataset in (tmp_path / "missing", train_only):  # no folder, no test split: refused before training
        with pytest.raises((FileNotFoundError, ValueError, KeyError)) as error:
            baseline.main(["--dataset", str(dataset), "--output_dir", str(out), "--max_train_steps", "1"])
        assert "test" in str(error.value) or "missing" in str(error.value)
    assert not out.exists()
