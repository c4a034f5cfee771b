"""Which model the app serves, and how it runs on this machine: a trained pipeline (Hub id or folder) with what its
model card says, else an untrained stand-in, so the app always starts; and the CPU threads it may use."""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import ModelCard

from ..models import GanClsGenerator, output_layers, standing_batch_norm_
from ..pipeline import GanClsPipeline
from ..text_encoders import CharCnnRnnConfig, CharCnnRnnEncoder, CharTokenizer, TextEncoder

logger = logging.getLogger(__name__)

# The embedded default: the repository's pretrained/ folder, shipped inside the package (t2i/assets/pretrained links to it).
DEFAULT_MODEL_FOLDER = Path(str(importlib.resources.files("t2i") / "assets" / "pretrained"))
# Reed-style captions for the examples, used until a model card lists its own (``widget:`` entries).
EXAMPLE_PROMPTS = (
    "this flower has five pointed purple petals and a yellow center",
    "a flower with many thin white petals surrounding a large yellow disc",
    "the petals of this flower are pink with white edges",
    "this flower has six round red petals with black spots",
    "a flower with three heart-shaped blue petals and a small white center",
    "this bloom has several oval orange petals arranged in two layers",
    "the petals are lavender with purple stripes and the center is maroon",
    "this flower has four yellow petals with red edges and a small green center",
)
# The tiny fallback's text encoder: enough to show that the text changes the images, small enough to build in ~0.1 s.
TINY_TEXT_ENCODER_CONFIG = dict(conv_channels=[16, 16, 16], rnn_hidden_size=16, embed_dim=32)


# The model card metrics the header shows, with their labels (text-image agreement per attribute, and fidelity).
HEADER_METRICS = {
    "text_image_agreement_petal_color": "petal colour", "text_image_agreement_center_color": "centre colour",
    "text_image_agreement_petal_count_word": "count bin", "oracle_frechet_distance_over_real": "FD / real-vs-real",
}


@dataclass
class LoadedModel:
    """A pipeline plus what the UI says about it: name, origin, training data, example prompts, load problems."""

    pipeline: GanClsPipeline
    name: str
    source: str
    trained_on: str
    examples: list[str] = field(default_factory=lambda: list(EXAMPLE_PROMPTS))
    notice: str | None = None  # why this is not the model that was asked for, if it is not
    metrics: dict[str, float] = field(default_factory=dict)  # the model card's measured numbers

    def description(self) -> str:
        """Markdown for the header of the app."""
        config = self.pipeline.generator.config
        lines = [
            f"**Model:** `{self.name}` · **from:** {self.source} · {config.resolution}×{config.resolution} px · "
            f"text encoder: {type(self.pipeline.text_encoder).__name__}",
            f"**Trained on:** {self.trained_on}",
        ]
        shown = [(label, self.metrics[name]) for name, label in HEADER_METRICS.items() if name in self.metrics]
        if shown:
            lines.append("**Measured on unseen test classes** (attribute oracle, model card): "
                         + " · ".join(f"{label} {value:.2f}" for label, value in shown))
        if self.notice:
            lines.insert(0, f"⚠️ {self.notice}")
        return "\n\n".join(lines)


def build_random_pipeline(
    seed: int = 0, ngf: int = 8, text_encoder: TextEncoder | None = None, resolution: int = 64
) -> GanClsPipeline:
    """An untrained pipeline with seeded weights: the app's stand-in when no trained model is available.

    Without ``text_encoder`` a tiny char-CNN-RNN is used. The generator's BatchNorm statistics are calibrated on a
    random batch, because untrained statistics (mean 0, var 1) squash every image to flat grey.
    """
    torch.manual_seed(seed)
    if text_encoder is None:
        text_encoder = TextEncoder(CharTokenizer(), CharCnnRnnEncoder(CharCnnRnnConfig(**TINY_TEXT_ENCODER_CONFIG)))
    generator = GanClsGenerator(text_embed_dim=text_encoder.embedding_dim, ngf=ngf, resolution=resolution)
    first_text_layer, output_conv = output_layers(generator)
    # Untrained, the text would barely move the images; a wider projection makes its effect visible.
    torch.nn.init.normal_(first_text_layer.weight, std=1.0)
    noise, text = torch.randn(64, generator.config.noise_dim), torch.randn(64, text_encoder.embedding_dim)
    standing_batch_norm_(generator, [(noise, text)])
    with torch.no_grad():
        # DCGAN's N(0, 0.02) output layer keeps tanh near 0 (flat grey); unit variance before tanh shows patterns.
        pre_tanh = []
        hook = output_conv.register_forward_hook(lambda module, inputs, output: pre_tanh.append(output))
        generator(noise, text)
        hook.remove()
        output_conv.weight /= pre_tanh[0].std()
    return GanClsPipeline(tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, generator=generator)


def read_model_card(folder: Path) -> tuple[str | None, list[str], dict[str, float]]:
    """The "Training data" section, the ``widget`` example prompts and the evaluation metrics of
    ``folder/README.md`` (None, [], {} if absent)."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None, [], {}
    card = ModelCard.load(readme)
    section = re.search(r"^## Training data\s*\n(.*?)(?=^## |\Z)", card.text, flags=re.M | re.S)
    trained_on = section.group(1).strip() if section else None
    if not trained_on and card.data.datasets:
        trained_on = ", ".join(f"`{name}`" for name in card.data.datasets)
    widget = card.data.to_dict().get("widget") or []
    examples = [entry["text"] for entry in widget if isinstance(entry, dict) and entry.get("text")]
    metrics = {result.metric_type: float(result.metric_value) for result in (card.data.eval_results or [])}
    return trained_on, examples, metrics


def load_model(name_or_path: str | None, default_folder: Path = DEFAULT_MODEL_FOLDER) -> LoadedModel:
    """Load the requested model (Hub id or folder), else ``default_folder``, else a seeded random pipeline.

    Never raises for a missing or broken model: the app must start anyway, so the failure becomes ``notice``
    (with the full traceback in the server log).
    """
    notice = None
    requested = name_or_path or (str(default_folder) if (default_folder / "model_index.json").is_file() else None)
    if requested:
        try:
            return _load_pretrained(requested)
        except Exception as error:  # any failure: the fallback below keeps the app usable and the notice says why
            logger.exception("could not load model %r", requested)
            notice = f"Could not load `{requested}`: {str(error).rstrip('.')}. Showing an untrained stand-in instead."
    else:
        notice = f"No trained model yet (`{default_folder.name}/` is empty): showing an untrained stand-in."
    return LoadedModel(
        pipeline=build_random_pipeline(seed=0),
        name="untrained stand-in (seed 0)",
        source="built at start-up",
        trained_on="nothing: random weights, so the images are patterns that do not depict the prompt.",
        notice=notice,
    )


def _load_pretrained(name_or_path: str) -> LoadedModel:
    pipeline = GanClsPipeline.from_pretrained(name_or_path)
    local = Path(name_or_path).is_dir()
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    trained_on, examples, metrics = read_model_card(Path(name_or_path) if local else Path(pipeline.config._name_or_path))
    return LoadedModel(
        pipeline=pipeline.to("cuda" if torch.cuda.is_available() else "cpu"),
        name=Path(name_or_path).resolve().name if local else name_or_path,
        source=f"local folder `{Path(name_or_path).resolve()}`" if local else f"Hugging Face Hub ({endpoint})",
        trained_on=trained_on or "not stated (the model has no model card with a “Training data” section).",
        examples=examples if len(examples) >= 2 else list(EXAMPLE_PROMPTS),  # the Interpolate tab needs two
        metrics=metrics,
    )


def serving_threads() -> int:
    """PyTorch intra-op threads for a process that also runs a web server: every core available to it but one.

    The server's Python work (HTTP, Gradio's queue, file serving) keeps one core busy under load; PyTorch threads
    that compete for it, spinning between operations, slow down both. Measured on these 2 cores with
    benchmarks/app_load.py (16 clients, six runs each, interleaved): p95 671-831 ms with 1 thread, 709-1105 ms with 2.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)
