"""benchmarks/gpu_run.sh end to end with tiny settings (--smoke): every stage runs, on the CPU here."""

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_run_smoke(tmp_path):
    out = tmp_path / "gpu_run"
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_run.sh"), str(out), "--smoke"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_speed"] and all(r["images_per_second"] > 0 for r in summary["train_speed"].values())
    assert {"train_speed_reed_b8", "train_speed_v3_b8"} <= set(summary["train_speed"])
    assert summary["training"] >= 1 and 0 <= summary["evaluation"]["agreement"]["petal_color"] <= 1
    assert "/" in summary["free_text_passed"] and "/" in summary["interpolation_passed"]
    assert (out / "model" / "model_index.json").is_file() and not list((out / "model").glob("checkpoint-*"))
    assert Image.open(out / "samples.png").size[0] == 8 * 64 and Image.open(out / "interpolation.png").size[0] == 8 * 64
    assert "passed" in (out / "cuda_tests.log").read_text() or "skipped" in (out / "cuda_tests.log").read_text()
    assert not (out / "data").exists()  # what comes back from a device stays small
