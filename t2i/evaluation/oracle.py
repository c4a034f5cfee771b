"""The attribute oracle: a CNN that reads the synthetic set's attributes off an image, its training renders,
training, and the copy shipped with t2i (checked by SHA-256)."""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..data import augment_batch, load_size_for
from ..data.transforms import pil_to_uint8, resize_center_crop
from ..datasets.synthetic import ATTRIBUTE_VALUES, map_in_order, render_random_flower
from ..hardware import cpu_has_fast_bf16
from ..hub import CheckpointError, SafetensorsOnlyMixin, check_before_loading
from ..text_pretraining.joint_embedding import recalibrate_batch_norm, strided_conv_stack

ORACLE_ATTRIBUTES = ("petal_color", "secondary_color", "petal_shape", "petal_count_word", "center_color")
"""The attributes the oracle reads (`petal_count_word` is the count bin: three .. six, several, many)."""
ORACLE_RESOLUTION = 64


class AttributeOracle(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    """A CNN that predicts each synthetic attribute from an image [B, 3, R, R] in [-1, 1].

    Stride-2 convolutions down to 4×4, each followed by `extra_convs_per_stage` 3×3 convolutions, flattened
    (counting petals needs the layout, not just pooled statistics) into `feature_dim` features (also the feature
    space of the Fréchet distance and the diversity metric), then one linear head per attribute.
    """

    @register_to_config
    def __init__(
        self,
        attribute_values: dict[str, list[str]] | None = None,
        resolution: int = ORACLE_RESOLUTION,
        channels: Sequence[int] = (32, 64, 128, 256),
        feature_dim: int = 256,
        extra_convs_per_stage: int = 1,
    ):
        super().__init__()
        if attribute_values is None:
            attribute_values = {name: [str(v) for v in ATTRIBUTE_VALUES[name]] for name in ORACLE_ATTRIBUTES}
            self.register_to_config(attribute_values=attribute_values)  # saved explicitly: the vocabulary may grow
        side = resolution // 2 ** len(channels)
        self.convs = strided_conv_stack(channels, extra_convs=extra_convs_per_stage)
        self.to_features = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, feature_dim), nn.LeakyReLU(0.2, inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(values)) for name, values in attribute_values.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim]."""
        return self.to_features(self.convs(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute: {name: [B, number of values]}."""
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Predicted value index per attribute {name: long [B]} and features [B, feature_dim], in eval mode."""
        was_training = self.training
        self.eval()
        predictions: dict[str, list[torch.Tensor]] = {name: [] for name in self.heads}
        features = []
        for start in range(0, len(images), batch_size):
            chunk = self.features(images[start : start + batch_size])
            features.append(chunk)
            for name, head in self.heads.items():
                predictions[name].append(head(chunk).argmax(dim=1))
        self.train(was_training)
        return {name: torch.cat(p) for name, p in predictions.items()}, torch.cat(features).float()


def attribute_targets(attributes: Sequence[dict], attribute_values: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Value indices {name: long [N]} of the recorded `attributes` (the dataset's `attributes` column)."""
    index = {name: {value: i for i, value in enumerate(values)} for name, values in attribute_values.items()}
    return {name: torch.tensor([index[name][str(row[name])] for row in attributes]) for name in attribute_values}


def check_attributes(dataset: Dataset) -> None:
    """Raise ValueError unless `dataset` has the synthetic set's `attributes` column (what the oracle is scored on)."""
    if "attributes" not in dataset.column_names:
        raise ValueError(
            "the attribute oracle needs the synthetic set's 'attributes' column (python -m t2i.datasets synth); "
            f"this dataset has {dataset.column_names}. For other data use --inception_weights for FID only."
        )


def train_attribute_oracle(
    images: torch.Tensor,
    attributes: Sequence[dict],
    *,
    steps: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
    bf16: bool | None = None,
    progress: bool = False,
    **config,
) -> AttributeOracle:
    """Train an `AttributeOracle` on images (uint8 [N, 3, L, L], L ≥ 64) and their attributes.

    Each step sees random 64-px crops and flips, the same augmentation the GAN trains on, so generated images
    come from the distribution the oracle knows. Adam with a cosine learning-rate decay, bf16 autocast when `bf16`
    (default: when the CPU has bf16 units, where it is about 2× faster; elsewhere it is far slower than fp32);
    BatchNorm statistics are recomputed exactly at the end. `config` goes to `AttributeOracle`. Returns the oracle in eval mode.
    """
    torch.manual_seed(seed)
    bf16 = cpu_has_fast_bf16() if bf16 is None else bf16
    oracle = AttributeOracle(**config)
    targets = attribute_targets(attributes, oracle.config.attribute_values)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(oracle.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    oracle.train().to(memory_format=torch.channels_last)
    for _ in tqdm(range(steps), desc="attribute oracle", disable=not progress):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        batch = augment_batch(images[index], ORACLE_RESOLUTION, train=True, generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = oracle(batch.contiguous(memory_format=torch.channels_last))
        loss = sum(F.cross_entropy(logits[name].float(), targets[name][index]) for name in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    oracle.to(memory_format=torch.contiguous_format)
    recalibrate_batch_norm(oracle, images, ORACLE_RESOLUTION, generator)
    return oracle.eval().requires_grad_(False)


def oracle_accuracy(oracle: AttributeOracle, images: torch.Tensor, attributes: Sequence[dict]) -> dict[str, float]:
    """Per-attribute accuracy of the oracle on images [N, 3, 64, 64] in [-1, 1] with recorded `attributes`, and
    `all`: the fraction of images with every attribute right."""
    predictions, _ = oracle.predict(images)
    targets = attribute_targets(attributes, oracle.config.attribute_values)
    right = {name: predictions[name] == targets[name] for name in predictions}
    result = {name: ok.float().mean().item() for name, ok in right.items()}
    result["all"] = torch.stack(list(right.values())).all(dim=0).float().mean().item()
    return result


def _render_oracle_example(job: tuple[int, int, int]) -> tuple[bytes, dict]:
    return render_random_flower(*job)


def oracle_training_set(num_images: int, seed: int = 0, render_resolution: int = 128, num_proc: int | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Decorrelated flowers for the oracle: uint8 [N, 3, 76, 76] and their attributes.

    Rendered, JPEG-encoded and resized exactly like the synthetic dataset, but every attribute is drawn
    independently (`random_attributes`) and no test-class combination occurs. Trained on the 82 train species
    instead, the oracle learns to recognise the species and read its attributes off the species (measured:
    0.27 centre-colour accuracy on the unseen test classes against 0.93 on train classes).
    """
    rows = map_in_order(_render_oracle_example, [(seed, i, render_resolution) for i in range(num_images)], num_proc)
    size = load_size_for(ORACLE_RESOLUTION)
    images = torch.stack([pil_to_uint8(resize_center_crop(Image.open(io.BytesIO(jpeg)), size)) for jpeg, _ in rows])
    return images, [attributes for _, attributes in rows]


SHIPPED_ORACLE_SHA256 = "ef868fabcd5abf660bfcf898cfd3045b90972da2eb615450636ccfbf9fb4bdfc"
"""SHA-256 of the shipped oracle's weights file: a damaged or swapped file is refused, not silently used."""


def shipped_oracle_folder() -> Path:
    """The attribute oracle v2 shipped inside the package (`t2i/assets/attribute_oracle/`), as a filesystem path."""
    return Path(str(importlib.resources.files("t2i") / "assets" / "attribute_oracle"))


def load_oracle(oracle_dir: str | os.PathLike | None = None) -> tuple[AttributeOracle, Path]:
    """The attribute oracle from `oracle_dir`, or the one shipped with t2i (checked against its SHA-256).

    Loaded through the same safetensors-only checks as every model (`CheckpointError` for a pickled, corrupt or
    mismatched folder). Raises `FileNotFoundError` when `oracle_dir` holds no oracle: train one with
    `python -m t2i.evaluation --train_oracle --oracle_dir DIR`.
    """
    folder = Path(oracle_dir) if oracle_dir is not None else shipped_oracle_folder()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no attribute oracle here (config.json); train one with "
                                f"`python -m t2i.evaluation --train_oracle --oracle_dir {folder}` (about an hour on one core)")
    if oracle_dir is None:
        weights = folder / "diffusion_pytorch_model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
        if digest != SHIPPED_ORACLE_SHA256:
            raise CheckpointError(f"{weights}: SHA-256 {digest} is not the shipped oracle's {SHIPPED_ORACLE_SHA256}; "
                                  "reinstall t2i, or give --oracle_dir")
    check_before_loading(AttributeOracle, folder)
    return AttributeOracle.from_pretrained(folder).eval().requires_grad_(False), folder


def load_or_train_oracle(
    oracle_dir: str | os.PathLike | None = None,
    *,
    num_images: int = 20000,
    steps: int = 6000,
    seed: int = 0,
    render_resolution: int = 128,
    progress: bool = True,
) -> tuple[AttributeOracle, Path]:
    """The attribute oracle: loaded from `oracle_dir` if saved there, else trained on `oracle_training_set` and
    saved there (safetensors).

    The default folder, ``$HF_HOME/t2i/oracles/<settings>`` (or under ``~/.cache/huggingface``), is keyed by the
    settings, so the oracle is trained once per machine (about an hour on one core).
    """
    if oracle_dir is None:
        home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        # "v2": the architecture with a 3×3 convolution after each stride-2 one; earlier oracles are not reused.
        oracle_dir = home / "t2i" / "oracles" / f"decorrelated-v2-{num_images}-{steps}-{seed}-{render_resolution}"
    oracle_dir = Path(oracle_dir)
    if (oracle_dir / "config.json").is_file():
        check_before_loading(AttributeOracle, oracle_dir)
        return AttributeOracle.from_pretrained(oracle_dir).eval().requires_grad_(False), oracle_dir
    if progress:
        print(f"Rendering {num_images} flowers for the attribute oracle, then {steps} training steps (tqdm shows the ETA)", flush=True)
    images, attributes = oracle_training_set(num_images, seed, render_resolution)
    oracle = train_attribute_oracle(images, attributes, steps=steps, seed=seed, progress=progress)
    partial = oracle_dir.with_name(oracle_dir.name + ".partial")  # renamed when complete: a kill never leaves half a model
    shutil.rmtree(partial, ignore_errors=True)
    oracle.save_pretrained(partial)
    shutil.rmtree(oracle_dir, ignore_errors=True)
    os.replace(partial, oracle_dir)
    return oracle, oracle_dir
