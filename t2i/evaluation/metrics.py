"""Metrics of a text-to-image generator read through the attribute oracle: text-image agreement, Fréchet
distance and diversity in oracle features, R-precision, and Inception FID when its weights are given."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset

from ..data import augment_batch, images_to_uint8, load_size_for
from ..datasets import caption_attributes
from ..text_pretraining.joint_embedding import JointImageEncoder
from ..pipeline import GanClsPipeline
from ..text_encoders import embedding_positions, sentence_embeds
from .oracle import ORACLE_ATTRIBUTES, ORACLE_RESOLUTION, AttributeOracle, check_attributes, oracle_accuracy

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


def frechet_distance_and_real_reference(oracle: AttributeOracle, generated_features: torch.Tensor, real_test_features: torch.Tensor,
                                        train_dataset: Dataset, rng: torch.Generator) -> tuple[float, float, int]:
    """Fréchet distance of generated to real test features, and of real train to real test images: the reference
    the evaluation divides by. Both use the same sample size n (the smallest of the three sets), so the reference
    has the same small-sample bias. Returns (generated vs test, train vs test, n); n train images and n test
    features are drawn with ``rng``, the train images encoded by ``oracle``."""
    size = min(len(generated_features), len(train_dataset), len(real_test_features))
    train_pick = torch.randperm(len(train_dataset), generator=rng)[:size].sort().values
    real_train = augment_batch(images_to_uint8(train_dataset.select(train_pick.tolist()), load_size_for(ORACLE_RESOLUTION)), ORACLE_RESOLUTION, train=False)
    _, train_features = oracle.predict(real_train)
    test_pick = torch.randperm(len(real_test_features), generator=rng)[:size]
    real_test = real_test_features[test_pick]
    return frechet_distance(generated_features[:size], real_test), frechet_distance(train_features, real_test), size


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
    check_attributes(test_dataset)
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

    fd_generated, fd_real, reference_size = frechet_distance_and_real_reference(oracle, generated_features, real_features, train_dataset, rng)

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
        # θ was trained against Reed's sentence embedding: a text encoder that keeps its positions is scored on their mean.
        text_embeds = sentence_embeds(text_embeds, embedding_positions(pipeline.text_encoder))
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


HEADLINE_METRICS = (
    *(f"text_image_agreement_{name}" for name in ORACLE_ATTRIBUTES), "text_image_agreement_all", "text_image_agreement_mean",
    "oracle_frechet_distance", "oracle_frechet_distance_over_real", "diversity_over_real", "r_precision", "fid_inception_v3",
)
"""Names `headline_metrics` may return."""
LOWER_IS_BETTER = frozenset({"oracle_frechet_distance", "oracle_frechet_distance_over_real", "fid_inception_v3"})
TABLE_COLUMNS = (
    ("petal", "text_image_agreement_petal_color"), ("centre", "text_image_agreement_center_color"),
    ("count", "text_image_agreement_petal_count_word"), ("secondary", "text_image_agreement_secondary_color"),
    ("shape", "text_image_agreement_petal_shape"), ("FD / real", "oracle_frechet_distance_over_real"),
    ("diversity / real", "diversity_over_real"), ("R-precision", "r_precision"),
)
"""(column label, `headline_metrics` name) of docs/results.md's quality tables, in their order."""


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
        check_attributes(test_dataset)
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
