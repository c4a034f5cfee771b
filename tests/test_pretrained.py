"""The embedded default model under pretrained/: small, safetensors only, documented, following its text, used by the app."""

from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from t2i import GanClsPipeline
from t2i.app_utils import load_model
from t2i.data import caption_attributes

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


@pytest.fixture(scope="module")
def pipeline() -> GanClsPipeline:
    return GanClsPipeline.from_pretrained(PRETRAINED)


def test_default_model_is_small_and_safetensors_only():
    files = [p for p in PRETRAINED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1000**2
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")]
    for component in ("generator", "text_encoder", "joint_image_encoder"):
        assert list((PRETRAINED / component).glob("*.safetensors")), component


def test_default_model_generates_deterministically(pipeline):
    first = pipeline("a flower with five red petals", num_images_per_prompt=2, generator=torch.Generator().manual_seed(3), output_type="np")
    again = pipeline("a flower with five red petals", num_images_per_prompt=2, generator=torch.Generator().manual_seed(3), output_type="np")
    assert first.images.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.images.std() > 0.05  # an image, not a flat colour


def test_default_model_follows_the_petal_colour(pipeline):
    # Same noise, only the colour word differs: the petals (most of the image) must change colour with it.
    latents = pipeline.prepare_latents(16, torch.Generator().manual_seed(0))

    def mean_rgb(prompt: str) -> np.ndarray:
        images = pipeline([prompt] * 16, latents=latents, output_type="np").images
        return images.mean(axis=(0, 1, 2))

    yellow, blue = mean_rgb("a flower with many oval yellow petals"), mean_rgb("a flower with many oval blue petals")
    assert (yellow[0] + yellow[1]) / 2 - yellow[2] > (blue[0] + blue[1]) / 2 - blue[2] + 0.1, (yellow, blue)
    red = mean_rgb("a flower with many oval red petals")
    assert red[0] - red[1] > yellow[0] - yellow[1] + 0.05 and red[0] - red[2] > blue[0] - blue[2] + 0.1, (red, yellow, blue)


def test_default_model_card_has_measured_numbers_and_examples():
    card = ModelCard.load(PRETRAINED / "README.md")
    metrics = {result.metric_type: result.metric_value for result in card.data.eval_results}
    for name in ("text_image_agreement_petal_color", "text_image_agreement_center_color", "text_image_agreement_petal_count_word",
                 "oracle_frechet_distance_over_real", "diversity_over_real", "r_precision", "text_encoder_zero_shot_top1"):
        assert name in metrics, name
    assert all(0.0 <= metrics[name] <= 1.0 for name in metrics if name.startswith("text_image_agreement"))
    assert "not on Oxford-102" in card.text and "| generated images vs their captions |" in card.text
    prompts = [entry["text"] for entry in card.data.widget]
    assert len(prompts) == 8 and all(caption_attributes(p) for p in prompts)


def test_app_serves_the_default_model():
    loaded = load_model(None)
    assert loaded.notice is None and loaded.name == "pretrained"
    assert loaded.examples == [entry["text"] for entry in ModelCard.load(PRETRAINED / "README.md").data.widget]
    assert "synthetic" in loaded.trained_on.lower()
