"""Reporting evaluation results: the markdown table, the sample grid, and the model card's numbers."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset
from diffusers.utils import make_image_grid

from ..datasets import caption_attributes
from ..hub import ModelCardInfo, render_model_card
from ..pipeline import GanClsPipeline
from .metrics import headline_metrics
from .oracle import ORACLE_ATTRIBUTES

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


def add_to_model_card(folder: str | os.PathLike, metrics: dict[str, float], **fields) -> Path:
    """Re-render ``folder/README.md`` from its ``training_summary.json`` with ``metrics`` added to its metrics (and
    ``fields`` of ``ModelCardInfo`` replaced), and save the summary with them.

    Raises:
        FileNotFoundError: ``folder`` has no ``training_summary.json`` (it is not a train_accelerate.py output).
    """
    folder = Path(folder)
    summary_file = folder / "training_summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{summary_file}: --update_model_card needs a train_accelerate.py output folder")
    summary = json.loads(summary_file.read_text())
    summary.update(fields, metrics={**summary.get("metrics", {}), **metrics})
    info = ModelCardInfo(**{k: v for k, v in summary.items() if k in {f.name for f in dataclasses.fields(ModelCardInfo)}})
    render_model_card(info).save(folder / "README.md")
    summary_file.write_text(json.dumps(summary, indent=2, default=str))
    return folder / "README.md"


def update_model_card(folder: str | os.PathLike, results: dict, dataset: str, split: str) -> Path:
    """Re-render ``folder/README.md`` with these ``python -m t2i.evaluation`` results added."""
    protocol = (
        f"`python -m t2i.evaluation` on split `{split}` of `{dataset}` (classes unseen in training): "
        f"{results['num_samples']} test captions, one image each (seed {results['seed']}), read by an attribute oracle "
        "trained on renders of the same renderer with independently drawn attributes and no test-class combination. "
        "Agreement = the oracle sees what the caption states; Fréchet distance on "
        "oracle features, against the real-train-vs-real-test distance; diversity against real images of one class."
    )
    return add_to_model_card(folder, headline_metrics(results), evaluation_protocol=protocol, evaluation_table=results_markdown(results))
