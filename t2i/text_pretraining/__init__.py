"""Preparing the frozen text encoder before GAN training: load one, or train Reed's char-CNN-RNN first.

    spec = TextEncoderSpec(name="char-cnn-rnn", teacher="sentence-transformers/all-MiniLM-L6-v2")
    text_encoder, metrics = prepare_text_encoder(spec, accelerator, output_dir, train_dataset, train_images, test_dataset, ...)

The char-CNN-RNN is trained on the main process with Reed et al.'s symmetric joint-embedding loss (DS-SJE,
CVPR 2016), or distilled from a sentence encoder (`teacher`), after which θ alone is fitted for R-precision. It
is saved atomically to ``output_dir/char_cnn_rnn`` and reused on resume, so a restart never trains it twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed

from ..data import images_to_uint8, load_or_build_caption_embeddings
from .joint_embedding import JOINT_IMAGE_ENCODER_FOLDER, train_joint_embedding
from .distillation import distill_text_encoder
from ..text_encoders import MINILM_ID, CharCnnRnnEncoder, TextEncoder, build_char_cnn_rnn

logger = logging.getLogger(__name__)

CHAR_CNN_RNN = "char-cnn-rnn"


TRAINED_TEXT_ENCODER_FOLDER = "char_cnn_rnn"
"""Where a run that trains its own text encoder keeps it, inside its output_dir."""


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which text encoder a run uses (train_accelerate.py's text-encoder flags).

    Attributes:
        name: ``"char-cnn-rnn"`` (trained here first) or a transformers id or folder.
        path: a trained text encoder to reuse: a char-CNN-RNN folder, or a saved pipeline such as ``pretrained``.
        teacher: distil the char-CNN-RNN from this sentence encoder instead of DS-SJE.
        steps, batch_size, learning_rate: the char-CNN-RNN phase (learning rate default: 3e-3 DS-SJE, 1e-3 distillation).
        char_cnn_rnn_config: ``CharCnnRnnConfig`` overrides.
    """

    name: str = MINILM_ID
    path: str | None = None
    teacher: str | None = None
    steps: int = 3000
    batch_size: int = 40
    learning_rate: float | None = None
    char_cnn_rnn_config: dict = field(default_factory=dict)

    def folder(self, output_dir: str | os.PathLike) -> Path:
        """Where the char-CNN-RNN and its joint embedding's θ are: ``path``, or trained into the output."""
        return Path(self.path or Path(output_dir) / TRAINED_TEXT_ENCODER_FOLDER)

    def description(self, text_encoder: TextEncoder, metrics: dict[str, float]) -> str:
        """What the model card says about the text encoder."""
        if self.path is None and self.teacher is not None:
            return f"char-CNN-RNN (trained here, distilled from {self.teacher})"
        if self.path is None:
            return "char-CNN-RNN (trained here, DS-SJE)" if self.name == CHAR_CNN_RNN else self.name
        objective = "distilled from a sentence encoder" if "text_encoder_distillation_steps" in metrics else "DS-SJE"
        kind = f"char-CNN-RNN ({objective})" if isinstance(text_encoder.model, CharCnnRnnEncoder) else type(text_encoder.model).__name__
        source = Path(self.path)
        origin = f"the text encoder of the pipeline {source.name}" if (source / "model_index.json").is_file() else source.name
        return f"{kind}, {text_encoder.embedding_dim}-d, trained beforehand ({origin})"


def _saved_metrics(folder: Path) -> dict[str, float]:
    metrics_file, summary_file = folder / "joint_embedding_metrics.json", folder / "training_summary.json"
    if metrics_file.is_file():
        return {f"text_encoder_{k}": v for k, v in json.loads(metrics_file.read_text()).items()}
    if summary_file.is_file():  # a saved pipeline (e.g. pretrained): its card recorded the encoder's metrics
        return {k: v for k, v in json.loads(summary_file.read_text()).get("metrics", {}).items() if k.startswith("text_encoder_")}
    return {}


def _distill_from_teacher(spec: TextEncoderSpec, device, train_dataset, test_dataset, seed: int, cache_dir: str | None):
    teacher = TextEncoder.from_pretrained(spec.teacher)
    targets = load_or_build_caption_embeddings(train_dataset, teacher, cache_dir=cache_dir)
    test_targets = load_or_build_caption_embeddings(test_dataset, teacher, cache_dir=cache_dir) if test_dataset is not None else None
    result = distill_text_encoder(
        train_dataset["captions"], targets, build_char_cnn_rnn(**{**spec.char_cnn_rnn_config, "embed_dim": targets.dim}),
        steps=spec.steps, learning_rate=spec.learning_rate or 1e-3, seed=seed, device=device, progress=True,
        test_captions=test_dataset["captions"] if test_dataset is not None else None, test_teacher_embeddings=test_targets,
    )
    logger.info(f"char-CNN-RNN distilled from {spec.teacher}: {result.metrics}")
    return result.text_encoder, {f"distillation_{k}": v for k, v in result.metrics.items()}


def prepare_text_encoder(spec: TextEncoderSpec, accelerator, output_dir: str | os.PathLike, train_dataset, train_images: torch.Tensor,
                         test_dataset, resolution: int, seed: int, cache_dir: str | None = None) -> tuple[TextEncoder, dict[str, float]]:
    """The frozen text encoder of a run and the metrics its training recorded (for the model card).

    ``train_images``: uint8 [N, 3, L, L] of ``train_dataset`` (for DS-SJE and θ). The char-CNN-RNN phase draws from
    its own seeded stream (``seed``), so a run killed inside it redraws the same on restart.
    """
    if spec.path is not None:
        return TextEncoder.from_pretrained(spec.path), _saved_metrics(Path(spec.path))
    if spec.name != CHAR_CNN_RNN:
        return TextEncoder.from_pretrained(spec.name), {}

    trained_dir = spec.folder(output_dir)  # reused on resume, so a restart never retrains it
    metrics_file = trained_dir / "joint_embedding_metrics.json"
    if accelerator.is_main_process and not metrics_file.exists():
        set_seed(seed)
        if spec.teacher is not None:
            text_encoder, metrics = _distill_from_teacher(spec, accelerator.device, train_dataset, test_dataset, seed, cache_dir)
        else:
            text_encoder, metrics = build_char_cnn_rnn(**spec.char_cnn_rnn_config), {}
        result = train_joint_embedding(
            train_images, train_dataset["captions"], torch.tensor(train_dataset["label"]), text_encoder,
            resolution=resolution, steps=spec.steps, batch_size=spec.batch_size, learning_rate=spec.learning_rate or 3e-3,
            train_text_encoder=spec.teacher is None, seed=seed, device=accelerator.device, progress=True,
            test_images=images_to_uint8(test_dataset, train_images.shape[-1]) if test_dataset is not None else None,
            test_captions=test_dataset["captions"] if test_dataset is not None else None,
            test_labels=torch.tensor(test_dataset["label"]) if test_dataset is not None else None,
        )
        partial = trained_dir.with_name(trained_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        result.text_encoder.save_pretrained(partial)
        result.image_encoder.save_pretrained(partial / JOINT_IMAGE_ENCODER_FOLDER)  # for R-precision in t2i.evaluation
        (partial / "joint_embedding_metrics.json").write_text(json.dumps({**metrics, **result.metrics}, indent=2))
        shutil.rmtree(trained_dir, ignore_errors=True)
        os.replace(partial, trained_dir)
        logger.info(f"char-CNN-RNN joint embedding: {result.metrics}")
    accelerator.wait_for_everyone()
    return TextEncoder.from_pretrained(trained_dir), _saved_metrics(trained_dir)
