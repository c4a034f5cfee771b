"""A built wheel works outside the checkout: model card, embedded default and attribute oracle come with it."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import sys
from pathlib import Path
import t2i
assert Path(t2i.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), t2i.__file__  # the wheel's copy
from t2i import GanClsPipeline, ModelCardInfo
from t2i.serving import DEFAULT_MODEL_FOLDER
from t2i.evaluation import load_oracle
from t2i.hub import render_model_card
from t2i.evaluation.robustness import free_text_prompts
card = render_model_card(ModelCardInfo(model_id="someone/flowers", dataset_name="synth", synthetic_data=True))
assert "someone/flowers" in card.content and "not on Oxford-102" in card.content
pipeline = GanClsPipeline.from_pretrained(DEFAULT_MODEL_FOLDER)
assert pipeline("a flower with red petals").images[0].size == (64, 64)
load_oracle()
assert len(free_text_prompts()) >= 30
print("ok", DEFAULT_MODEL_FOLDER)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)], check=True, timeout=600)
    return next(out.glob("t2i-*.whl"))


def test_the_wheel_carries_its_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("t2i/assets/model_card.md", "t2i/assets/free_text_prompts.txt", "t2i/assets/pretrained/model_index.json",
                 "t2i/assets/pretrained/generator/diffusion_pytorch_model.safetensors",
                 "t2i/assets/attribute_oracle/diffusion_pytorch_model.safetensors", "t2i/training/gan_cls.py"):
        assert name in names
    assert (REPO / "model_card.md").read_bytes() == zipfile.ZipFile(wheel).read("t2i/assets/model_card.md")  # one template


def test_an_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok") and str(target) in result.stdout
