"""Quality metrics for text-to-image generators on the synthetic captioned-flowers set.

The synthetic set records every image's attributes, so an **attribute oracle** (a small CNN trained on flowers
from the same renderer, with every attribute drawn independently and no test-class combination) can read petal
colour, secondary colour, petal shape, petal-count bin and centre colour off any image. With it:

- **text-image agreement**: for each sampled test caption, one generated image; for every attribute the caption
  states, does the oracle see it? Reported per attribute and as "all stated attributes right";
- **Fréchet distance** between oracle features of generated and of real test images, next to the distance between
  real train and real test images (the same sample sizes), so the number has a scale;
- **diversity**: mean pairwise oracle-feature distance between images of one caption drawn with different seeds,
  against the same quantity for real images of the caption's class (mode collapse shows as a ratio near 0);
- **R-precision** (AttnGAN's, R = 1): with a char-CNN-RNN joint embedding, the fraction of generated images whose
  own caption scores highest among 100 (itself and 99 captions of other classes) under the joint embedding's
  compatibility φ(t)·θ(x);
- **FID** with Inception-v3 through torchmetrics, when a weights file is given (not available offline here).

    python -m t2i.evaluation --model pretrained --dataset data/synthetic-flowers --split test --num-samples 2000 --out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.resources
import io
import json
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import make_image_grid
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .data import (
    augment_batch,
    caption_attributes,
    images_to_uint8,
    load_captioned_dataset,
    load_size_for,
)
from .data.synthetic import ATTRIBUTE_VALUES, map_in_order, render_random_flower
from .data.transforms import pil_to_uint8, resize_center_crop
from .hardware import cpu_has_fast_bf16
from .hub import (
    CheckpointError,
    ModelCardInfo,
    SafetensorsOnlyMixin,
    check_before_loading,
    render_model_card,
    resolve_pretrained_folder,
)
from .joint_embedding import (
    JOINT_IMAGE_ENCODER_FOLDER,
    JointImageEncoder,
    recalibrate_batch_norm,
    strided_conv_stack,
)
from .pipeline import GanClsPipeline

__all__ = [
    "ORACLE_ATTRIBUTES", "AttributeOracle", "attribute_targets", "evaluate_pipeline", "example_captions", "frechet_distance",
    "GeneratorScorer", "HEADLINE_METRICS", "LOWER_IS_BETTER", "headline_metrics", "load_joint_image_encoder", "load_oracle", "load_or_train_oracle", "mean_pairwise_distance", "oracle_accuracy", "oracle_training_set",
    "r_precision", "results_markdown", "save_sample_grid", "text_image_agreement", "train_attribute_oracle", "update_model_card",
]

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


def _check_attributes(dataset: Dataset) -> None:
    if "attributes" not in dataset.column_names:
        raise ValueError(
            "the attribute oracle needs the synthetic set's 'attributes' column (python -m t2i.data synth); "
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


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D]:
    |μa − μb|² + tr(Σa) + tr(Σb) − 2 tr((Σa^½ Σb Σa^½)^½), in float64 (no scipy needed)."""
    a, b = features_a.double(), features_b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    sqrt_a = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    cross_trace = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross_trace)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs of rows of [N, D] (N ≥ 2)."""
    distances = torch.cdist(features.double(), features.double())
    n = len(features)
    return float(distances.sum() / (n * (n - 1)))


def text_image_agreement(
    predictions: dict[str, torch.Tensor], captions: Sequence[str], attribute_values: dict[str, list[str]]
) -> dict[str, float]:
    """How often the oracle's reading of each image agrees with what its caption states.

    For each attribute: the fraction right among the captions that state it (one value; self-contradicting
    captions are skipped). `all`: the fraction of captions stating at least one oracle attribute whose every
    stated attribute is right. `count_<name>`: how many captions stated it.
    """
    right = {name: 0 for name in predictions}
    stated = {name: 0 for name in predictions}
    all_right, any_stated = 0, 0
    for i, caption in enumerate(captions):
        mentioned = {k: v for k, v in caption_attributes(caption).items() if k in predictions and len(v) == 1}
        if not mentioned:
            continue
        any_stated += 1
        every = True
        for name, values in mentioned.items():
            ok = attribute_values[name][int(predictions[name][i])] == str(next(iter(values)))
            right[name] += ok
            stated[name] += 1
            every &= ok
        all_right += every
    result = {name: right[name] / stated[name] if stated[name] else float("nan") for name in predictions}
    result["all"] = all_right / any_stated if any_stated else float("nan")
    result.update({f"count_{name}": float(stated[name]) for name in predictions})
    return result


def r_precision(image_embeds: torch.Tensor, caption_embeds: torch.Tensor, caption_labels: torch.Tensor,
                generator: torch.Generator, num_candidates: int = 100) -> float:
    """AttnGAN's R-precision with R = 1 under a joint embedding's compatibility score (inner product).

    Image i belongs to caption i. Its candidates are caption i and `num_candidates − 1` captions drawn from other
    classes; it counts as right when its own caption scores strictly highest.
    """
    n = len(image_embeds)
    candidates = torch.randint(n, (n, num_candidates - 1), generator=generator)
    clash = caption_labels[candidates] == caption_labels[:, None]
    while clash.any():  # rejection sampling of same-class captions
        candidates[clash] = torch.randint(n, (int(clash.sum()),), generator=generator)
        clash = caption_labels[candidates] == caption_labels[:, None]
    own = (image_embeds * caption_embeds).sum(dim=1)
    others = torch.einsum("nd,nkd->nk", image_embeds, caption_embeds[candidates])
    return float((own[:, None] > others).all(dim=1).float().mean())


def _generate(pipeline: GanClsPipeline, text_embeds: torch.Tensor, seeds: Sequence[int], batch_size: int) -> torch.Tensor:
    """Images [N, 3, 64, 64] in [-1, 1], quantised to 8 bits like any saved image; image i uses seed i."""
    chunks = []
    for start in range(0, len(text_embeds), batch_size):
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        images = pipeline(prompt_embeds=text_embeds[start : start + batch_size], generator=generators, output_type="pt").images
        images = images.float().cpu().mul(255).round().div(255)
        if images.shape[-1] != ORACLE_RESOLUTION:
            images = F.interpolate(images, size=ORACLE_RESOLUTION, mode="bilinear", antialias=True, align_corners=False)
        chunks.append(images * 2 - 1)
    return torch.cat(chunks)


def _inception_fid(weights_path: str, real: torch.Tensor, fake: torch.Tensor) -> float:
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as error:
        raise ImportError("Inception FID needs `pip install torchmetrics torch-fidelity`") from error
    if not Path(weights_path).is_file():
        raise FileNotFoundError(f"{weights_path}: no Inception-v3 FID weights file (pt_inception-2015-12-05-6726825d.pth)")
    fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights_path)
    for images, real_flag in ((real, True), (fake, False)):
        for start in range(0, len(images), 200):
            fid.update(images[start : start + 200].add(1).div(2), real=real_flag)
    return float(fid.compute())


def evaluate_pipeline(
    pipeline: GanClsPipeline,
    test_dataset: Dataset,
    train_dataset: Dataset,
    oracle: AttributeOracle,
    *,
    num_samples: int = 2000,
    seed: int = 0,
    joint_image_encoder: JointImageEncoder | None = None,
    diversity_seeds: int = 8,
    batch_size: int = 250,
    inception_weights: str | None = None,
) -> dict:
    """Every metric of this module for `pipeline` on `test_dataset` (see the module docstring).

    `num_samples` (caption, image) pairs are drawn from the test split with `seed`: each test image in turn
    (in a seeded random order) with one of its captions, and one generated image per caption.
    """
    _check_attributes(test_dataset)
    started = time.monotonic()
    rng = torch.Generator().manual_seed(seed)
    real_test = augment_batch(images_to_uint8(test_dataset, load_size_for(ORACLE_RESOLUTION)), ORACLE_RESOLUTION, train=False)
    labels = torch.tensor(test_dataset["label"])
    all_captions = test_dataset["captions"]
    image_index = torch.cat([torch.randperm(len(test_dataset), generator=rng) for _ in range(math.ceil(num_samples / len(test_dataset)))])[:num_samples]
    captions = [all_captions[i][int(torch.randint(len(all_captions[i]), (1,), generator=rng))] for i in image_index.tolist()]

    text_embeds = torch.cat([pipeline.encode_prompt(captions[s : s + batch_size]) for s in range(0, num_samples, batch_size)])
    generated = _generate(pipeline, text_embeds, [seed * 1_000_003 + i for i in range(num_samples)], batch_size)
    values = oracle.config.attribute_values
    generated_predictions, generated_features = oracle.predict(generated)
    real_predictions, real_features = oracle.predict(real_test)

    # Fréchet distances with equal sample sizes, so the real-vs-real reference has the same bias.
    reference_size = min(num_samples, len(train_dataset), len(test_dataset))
    train_pick = torch.randperm(len(train_dataset), generator=rng)[:reference_size].sort().values
    real_train = augment_batch(images_to_uint8(train_dataset.select(train_pick.tolist()), load_size_for(ORACLE_RESOLUTION)), ORACLE_RESOLUTION, train=False)
    _, train_features = oracle.predict(real_train)
    test_pick = torch.randperm(len(test_dataset), generator=rng)[:reference_size]
    fd_generated = frechet_distance(generated_features[:reference_size], real_features[test_pick])
    fd_real = frechet_distance(train_features, real_features[test_pick])

    # Diversity: per test class, one caption × `diversity_seeds` seeds against that many real images of the class.
    generated_spread, real_spread, counts = [], [], []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        if len(members) < 2:
            continue
        count = min(diversity_seeds, len(members))
        counts.append(count)
        caption_embed = pipeline.encode_prompt([all_captions[int(members[0])][0]]).expand(count, -1)
        images = _generate(pipeline, caption_embed, [10_000_019 * (label + 1) + k for k in range(count)], batch_size)
        generated_spread.append(mean_pairwise_distance(oracle.predict(images)[1]))
        real_spread.append(mean_pairwise_distance(real_features[members[:count]]))
    if counts:
        diversity_generated, diversity_real = sum(generated_spread) / len(generated_spread), sum(real_spread) / len(real_spread)
    else:  # no test class has two images (a tiny set): nothing to compare against
        diversity_generated = diversity_real = float("nan")

    results = {
        "num_samples": num_samples,
        "seed": seed,
        "oracle_accuracy_real_test": oracle_accuracy(oracle, real_test, test_dataset["attributes"]),
        "agreement_generated": text_image_agreement(generated_predictions, captions, values),
        "agreement_real": text_image_agreement({k: v[image_index] for k, v in real_predictions.items()}, captions, values),
        "frechet_distance": {"generated_vs_real_test": fd_generated, "real_train_vs_real_test": fd_real,
                             "ratio": fd_generated / fd_real, "sample_size": reference_size},
        "diversity": {"generated": diversity_generated, "real_same_class": diversity_real,
                      "ratio": diversity_generated / diversity_real if counts else float("nan"),
                      "images_per_class": max(counts, default=0), "classes": len(counts)},
        "r_precision": None,
        "fid_inception": None,
    }
    if joint_image_encoder is not None:
        with torch.inference_mode():
            image_embeds = torch.cat([joint_image_encoder.eval()(generated[s : s + batch_size]) for s in range(0, num_samples, batch_size)])
            real_embeds = joint_image_encoder(real_test[image_index])
        caption_labels = labels[image_index]
        results["r_precision"] = {
            "generated": r_precision(image_embeds.float(), text_embeds.float().cpu(), caption_labels, torch.Generator().manual_seed(seed)),
            "real": r_precision(real_embeds.float(), text_embeds.float().cpu(), caption_labels, torch.Generator().manual_seed(seed)),
            "chance": 0.01,
        }
    if inception_weights is not None:
        results["fid_inception"] = _inception_fid(inception_weights, real_test, generated)
    results["seconds"] = time.monotonic() - started
    return results


def results_markdown(results: dict, title: str = "") -> str:
    """The results as a markdown section: agreement per attribute, fidelity, diversity, R-precision."""
    names = [n for n in ORACLE_ATTRIBUTES if n in results["agreement_generated"]]
    pretty = {"petal_color": "petal colour", "secondary_color": "secondary colour", "petal_shape": "petal shape",
              "petal_count_word": "petal-count bin", "center_color": "centre colour"}
    lines = [f"### {title}" if title else "", "",
             "| | " + " | ".join(pretty.get(n, n) for n in names) + " | all |",
             "|---|" + "---|" * (len(names) + 1)]
    for key, label in (("agreement_generated", "generated images vs their captions"), ("agreement_real", "real images vs their captions"),
                       ("oracle_accuracy_real_test", "oracle accuracy, real test images")):
        row = results[key]
        lines.append(f"| {label} | " + " | ".join(f"{row[n]:.3f}" for n in (*names, "all")) + " |")
    fd, diversity = results["frechet_distance"], results["diversity"]
    lines += ["", "| metric | generated | real reference | ratio |", "|---|---|---|---|",
              f"| Fréchet distance (oracle features, {fd['sample_size']} images) | {fd['generated_vs_real_test']:.2f} | "
              f"{fd['real_train_vs_real_test']:.2f} (train vs test) | {fd['ratio']:.2f} |",
              f"| diversity (mean pairwise feature distance, {diversity['images_per_class']} per class) | "
              f"{diversity['generated']:.2f} | {diversity['real_same_class']:.2f} | {diversity['ratio']:.2f} |"]
    if results.get("r_precision"):
        rp = results["r_precision"]
        lines.append(f"| R-precision (R = 1, 100 candidates) | {rp['generated']:.3f} | {rp['real']:.3f} (real images) | chance {rp['chance']:.2f} |")
    if results.get("fid_inception") is not None:
        lines.append(f"| FID (Inception-v3) | {results['fid_inception']:.2f} | | |")
    lines += ["", f"{results['num_samples']} samples, seed {results['seed']}, {results['seconds']:.0f} s."]
    return "\n".join(lines).lstrip("\n") + "\n"


def example_captions(dataset: Dataset, count: int = 8) -> list[str]:
    """One caption from each of the first `count` classes of `dataset`: the one stating the most oracle
    attributes (ties: the shortest), i.e. the most demanding prompts the evaluation asks for."""
    chosen: dict[int, tuple[int, int, str]] = {}
    for label, captions in zip(dataset["label"], dataset["captions"]):
        for caption in captions:
            stated = sum(1 for name in caption_attributes(caption) if name in ORACLE_ATTRIBUTES)
            key = (-stated, len(caption), caption)
            if label not in chosen or key < chosen[label]:
                chosen[label] = key
    return [chosen[label][2] for label in sorted(chosen)[:count]]


def save_sample_grid(pipeline: GanClsPipeline, prompts: Sequence[str], path: str | os.PathLike, num_seeds: int = 8) -> Path:
    """A PNG grid: one row per prompt, one column per seed (0 .. num_seeds − 1), at the model's native size."""
    images = []
    for prompt in prompts:
        generators = [torch.Generator().manual_seed(seed) for seed in range(num_seeds)]
        images += pipeline([prompt] * num_seeds, generator=generators).images
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(images, rows=len(prompts), cols=num_seeds).save(path)
    return Path(path)


HEADLINE_METRICS = (
    *(f"text_image_agreement_{name}" for name in ORACLE_ATTRIBUTES), "text_image_agreement_all", "text_image_agreement_mean",
    "oracle_frechet_distance", "oracle_frechet_distance_over_real", "diversity_over_real", "r_precision", "fid_inception_v3",
)
"""Names `headline_metrics` may return."""
LOWER_IS_BETTER = frozenset({"oracle_frechet_distance", "oracle_frechet_distance_over_real", "fid_inception_v3"})


def headline_metrics(results: dict) -> dict[str, float]:
    """The few numbers a model card's metadata carries (flat names, one value each; see `HEADLINE_METRICS`).

    `text_image_agreement_mean` is the mean of the per-attribute agreements: a graded summary that moves with
    every attribute, where `_all` (every stated attribute right) stays near 0 until all of them are learnt.
    """
    agreement = results["agreement_generated"]
    metrics = {f"text_image_agreement_{name}": agreement[name] for name in ORACLE_ATTRIBUTES if not math.isnan(agreement[name])}
    metrics["text_image_agreement_all"] = agreement["all"]
    per_attribute = [metrics[f"text_image_agreement_{name}"] for name in ORACLE_ATTRIBUTES if f"text_image_agreement_{name}" in metrics]
    metrics["text_image_agreement_mean"] = sum(per_attribute) / len(per_attribute) if per_attribute else float("nan")
    metrics["oracle_frechet_distance"] = results["frechet_distance"]["generated_vs_real_test"]
    metrics["oracle_frechet_distance_over_real"] = results["frechet_distance"]["ratio"]
    metrics["diversity_over_real"] = results["diversity"]["ratio"]
    if results.get("r_precision"):
        metrics["r_precision"] = results["r_precision"]["generated"]
    if results.get("fid_inception") is not None:
        metrics["fid_inception_v3"] = results["fid_inception"]
    return metrics


class GeneratorScorer:
    """Scores a generator during training on a fixed set of test captions (`evaluate_pipeline` with fewer samples).

    The captions, seeds and reference images are the same at every call, so scores of different steps compare
    the generators alone. The generator is put back in the mode it was in.
    """

    def __init__(self, text_encoder, test_dataset: Dataset, train_dataset: Dataset, oracle: AttributeOracle,
                 num_samples: int = 500, seed: int = 0, diversity_seeds: int = 4):
        _check_attributes(test_dataset)
        self.text_encoder, self.test_dataset, self.train_dataset, self.oracle = text_encoder, test_dataset, train_dataset, oracle
        self.num_samples, self.seed, self.diversity_seeds = num_samples, seed, diversity_seeds

    def __call__(self, generator) -> dict[str, float]:
        """`headline_metrics` of `generator` (a `GanClsGenerator`, on any device)."""
        was_training = generator.training
        try:
            pipeline = GanClsPipeline(tokenizer=self.text_encoder.tokenizer, text_encoder=self.text_encoder.model, generator=generator)
            pipeline.set_progress_bar_config(disable=True)
            results = evaluate_pipeline(pipeline, self.test_dataset, self.train_dataset, self.oracle, num_samples=self.num_samples,
                                        seed=self.seed, diversity_seeds=self.diversity_seeds)
        finally:
            generator.train(was_training)
        return headline_metrics(results)


def update_model_card(folder: str | os.PathLike, results: dict, dataset: str, split: str) -> Path:
    """Re-render ``folder/README.md`` from its ``training_summary.json`` with these evaluation results added."""
    folder = Path(folder)
    summary_file = folder / "training_summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{summary_file}: --update_model_card needs a train_accelerate.py output folder")
    summary = json.loads(summary_file.read_text())
    info = ModelCardInfo(**{k: v for k, v in summary.items() if k in {f.name for f in dataclasses.fields(ModelCardInfo)}})
    info.metrics = {**info.metrics, **headline_metrics(results)}
    info.evaluation_protocol = (
        f"`python -m t2i.evaluation` on split `{split}` of `{dataset}` (classes unseen in training): "
        f"{results['num_samples']} test captions, one image each (seed {results['seed']}), read by an attribute oracle "
        "trained on renders of the same renderer with independently drawn attributes and no test-class combination. "
        "Agreement = the oracle sees what the caption states; Fréchet distance on "
        "oracle features, against the real-train-vs-real-test distance; diversity against real images of one class."
    )
    info.evaluation_table = results_markdown(results)
    summary.update(metrics=info.metrics, evaluation_protocol=info.evaluation_protocol, evaluation_table=info.evaluation_table)
    render_model_card(info).save(folder / "README.md")
    summary_file.write_text(json.dumps(summary, indent=2, default=str))
    return folder / "README.md"


def load_joint_image_encoder(model: str | os.PathLike) -> JointImageEncoder | None:
    """θ saved next to a pipeline (folder `joint_image_encoder/`, written by train_accelerate.py), or None."""
    try:
        folder = resolve_pretrained_folder(model, subfolder=JOINT_IMAGE_ENCODER_FOLDER) / JOINT_IMAGE_ENCODER_FOLDER
    except FileNotFoundError:
        return None
    if not (folder / "config.json").is_file():
        return None
    check_before_loading(JointImageEncoder, folder)
    return JointImageEncoder.from_pretrained(folder).eval().requires_grad_(False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags of `python -m t2i.evaluation`."""
    parser = argparse.ArgumentParser(prog="python -m t2i.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder or Hub model id")
    parser.add_argument("--dataset", required=True, help="synthetic captioned-flowers folder or Hub dataset id")
    parser.add_argument("--split", default="test", help="split whose captions are generated and compared against")
    parser.add_argument("--train_split", default="train", help="split the oracle trains on and the real-vs-real reference")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle_dir", default=None, help="a saved attribute oracle (default: the one shipped with t2i)")
    parser.add_argument("--train_oracle", action="store_true",
                        help="train the oracle (20k renders, about an hour on one core) into --oracle_dir (default: the HF cache) first")
    parser.add_argument("--oracle_steps", type=int, default=6000, help="training steps with --train_oracle")
    parser.add_argument("--oracle_images", type=int, default=20000, help="rendered training images with --train_oracle")
    parser.add_argument("--inception_weights", default=None, help="Inception-v3 FID weights file (pt_inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--out", default=None, help="results JSON; a markdown table is written next to it (.md)")
    parser.add_argument("--sample_grid", default=None, help="also save a PNG grid: 8 test captions × 8 seeds")
    parser.add_argument("--update_model_card", action="store_true", help="add the results to the local model folder's README.md")
    args = parser.parse_args(argv)
    if args.num_samples < 2:
        parser.error(f"--num-samples must be at least 2, got {args.num_samples}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Evaluate one model; print the markdown table, write JSON and markdown when --out is given."""
    args = parse_args(argv)
    test_dataset = load_captioned_dataset(args.dataset, args.split)
    train_dataset = load_captioned_dataset(args.dataset, args.train_split)
    _check_attributes(test_dataset)
    pipeline = GanClsPipeline.from_pretrained(args.model)
    if args.train_oracle:
        oracle, oracle_dir = load_or_train_oracle(args.oracle_dir, num_images=args.oracle_images, steps=args.oracle_steps)
    else:
        oracle, oracle_dir = load_oracle(args.oracle_dir)
    results = evaluate_pipeline(
        pipeline, test_dataset, train_dataset, oracle, num_samples=args.num_samples, seed=args.seed,
        joint_image_encoder=load_joint_image_encoder(args.model), inception_weights=args.inception_weights,
    )
    results.update({"model": str(args.model), "dataset": str(args.dataset), "split": args.split, "oracle_dir": str(oracle_dir)})
    if args.sample_grid:
        prompts = example_captions(test_dataset)
        save_sample_grid(pipeline, prompts, args.sample_grid)
        results["sample_grid"] = {"path": args.sample_grid, "prompts": prompts}
    table = results_markdown(results, title=f"{args.model} on {args.dataset} ({args.split})")
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        Path(re.sub(r"\.json$", "", args.out) + ".md").write_text(table)
    if args.update_model_card:
        print(f"Updated {update_model_card(args.model, results, args.dataset, args.split)}")
    return results


if __name__ == "__main__":
    import sys

    try:
        main()
    except (FileNotFoundError, ValueError) as error:  # a missing set, split or model, a refused file: say it, no traceback
        sys.exit(f"error: {error}")
