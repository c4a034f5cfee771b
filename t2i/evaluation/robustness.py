"""Checks that a generator holds up away from the training captions: free-text prompts and GAN-INT interpolation.

The oracle metrics of `t2i.evaluation.metrics` ask for caption-like prompts. Visitors type "a rose" or "purple", and a
generator with a cliff just off the training captions turns those, and the middle of a caption interpolation,
into one saturated noise pattern for every seed. Three image statistics catch that, each compared with real
images of the synthetic set at the model's resolution:

- **seed spread**: the per-pixel standard deviation over images of one prompt drawn with different seeds
  (0–255 scale): near 0 when the noise is ignored;
- **roughness**: the mean absolute difference between neighbouring pixels (0–255): noise patterns are several
  times rougher than any real image;
- **flower-pixel share**: the fraction of pixels that are neither foliage-green, nor dark, nor neutral grey (the
  renderer's backgrounds are green or dark; its petals and discs are none of the three), so an empty or washed-out
  frame scores near 0.

    python -m t2i.evaluation.robustness --model pretrained --out benchmarks/results/robustness_default_v9.json
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..cli import run_main
from ..data import augment_batch

FREE_TEXT_PROMPTS_FILE = "free_text_prompts.txt"
INTERPOLATION_PAIRS = (
    ("a flower with red petals", "a flower with white petals"),
    ("this flower has five pointed purple petals and a yellow center", "a flower with many thin yellow petals surrounding a dark brown disc"),
    ("the petals are pink with white edges", "a white middle surrounded by three pointed pink petals"),
    ("a green disc encircled by four oval peach petals", "this dark orange flower has many oval petals and a white disc"),
    ("a rose", "sunflower"),
)
"""Caption pairs for the interpolation check: colour swaps, two species, and two free-text prompts."""


def free_text_prompts() -> list[str]:
    """The shipped list of prompts unlike the training captions (flower names, colour words, one-word prompts, long
    Oxford-style captions), one per line of ``t2i/assets/free_text_prompts.txt``."""
    text = (importlib.resources.files("t2i") / "assets" / FREE_TEXT_PROMPTS_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def roughness(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontally and vertically neighbouring pixels, per image, on the 0–255
    scale. ``images``: float [N, 3, H, W] in [0, 1]. Returns [N]."""
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return 255 * (horizontal + vertical) / 2


def flower_pixel_mask(images: torch.Tensor) -> torch.Tensor:
    """Pixels that are neither foliage-green (G ≥ max(R, B) + 0.04), nor dark (max(R, G, B) < 0.3), nor a neutral
    mid-tone (max − min of R, G, B < 0.08 with max < 0.7): the renderer's petals and discs. Its backgrounds are green
    or dark and its white petals mostly bright; without the grey rule a flat grey frame, the washed-out output of a
    collapsed generator, would count as all flower. The rule also drops the shaded parts of white petals and the
    edges of black discs: 3.5 % of real flower pixels (the mean share of 256 renders goes from 0.289 to 0.279). A flat field of a petal colour still
    counts: roughness, seed spread and the oracle's features are the checks for that.
    ``images``: float [N, 3, H, W] in [0, 1]. Returns bool [N, H, W]."""
    red, green, blue = images[:, 0], images[:, 1], images[:, 2]
    brightest, darkest = images.amax(dim=1), images.amin(dim=1)
    green_dominant = green >= torch.maximum(red, blue) + 0.04
    dark = brightest < 0.3
    grey = (brightest - darkest < 0.08) & (brightest < 0.7)
    return ~(green_dominant | dark | grey)


def flower_pixel_share(images: torch.Tensor) -> torch.Tensor:
    """Fraction of ``flower_pixel_mask`` pixels per image. ``images``: float [N, 3, H, W] in [0, 1]. Returns [N] in [0, 1]."""
    return flower_pixel_mask(images).float().mean(dim=(1, 2))


def seed_spread(images: torch.Tensor) -> float:
    """Per-pixel standard deviation over images of one prompt [S, 3, H, W] in [0, 1] (S ≥ 2), averaged, 0–255 scale."""
    return float(255 * images.std(dim=0).mean())


def real_image_statistics(resolution: int = 64, num_images: int = 256, seed: int = 12345) -> dict[str, float]:
    """The three statistics on `num_images` freshly rendered real flowers (JPEG-encoded and resized like the
    synthetic set, centre-cropped to `resolution`): the reference every check compares against.

    Seed spread is measured on groups of 8 images, like the checks (different flowers, so an upper reference).
    """
    from .oracle import oracle_training_set  # the renders the oracle trains on: the dataset's own pipeline

    images, _ = oracle_training_set(num_images, seed=seed, num_proc=1)
    real = augment_batch(images, resolution, train=False).add(1).div(2)
    rough, share = roughness(real), flower_pixel_share(real)
    spreads = [seed_spread(real[i : i + 8]) for i in range(0, len(real) - 7, 8)]
    return {
        "roughness_mean": float(rough.mean()), "roughness_p95": float(rough.quantile(0.95)), "roughness_max": float(rough.max()),
        "flower_share_mean": float(share.mean()), "flower_share_p05": float(share.quantile(0.05)),
        "spread_of_8_different_flowers": sum(spreads) / len(spreads), "num_images": num_images,
    }


def _images(pipeline, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return pipeline(list(prompts), generator=generators, output_type="pt").images.float().cpu()


def free_text_report(pipeline, prompts: Sequence[str], reference: dict[str, float], num_seeds: int = 8,
                     min_spread: float = 8.0) -> dict:
    """For each prompt, `num_seeds` images (seeds 0 .. num_seeds − 1): their seed spread, mean roughness and mean
    flower-pixel share, and whether it passes:

    - spread ≥ `min_spread` (a collapsed prompt measured about 4, caption-like prompts 10 or more);
    - roughness ≤ the rendered real images' 95th percentile;
    - flower-pixel share ≥ half the real images' mean (an empty frame is near 0).
    """
    rows = []
    for prompt in prompts:
        images = _images(pipeline, [prompt] * num_seeds, range(num_seeds))
        row = {"prompt": prompt, "spread": seed_spread(images), "roughness": float(roughness(images).mean()),
               "flower_share": float(flower_pixel_share(images).mean())}
        row["passes"] = bool(row["spread"] >= min_spread and row["roughness"] <= reference["roughness_p95"]
                             and row["flower_share"] >= 0.5 * reference["flower_share_mean"])
        rows.append(row)
    return {"prompts": rows, "passed": sum(r["passes"] for r in rows), "total": len(rows), "reference": reference,
            "min_spread": min_spread, "num_seeds": num_seeds}


def interpolation_report(pipeline, pairs: Sequence[tuple[str, str]] = INTERPOLATION_PAIRS, num_steps: int = 8,
                         seeds: Sequence[int] = (0, 1, 2, 3), tolerance: float = 0.15, oracle=None,
                         real_features: torch.Tensor | None = None) -> dict:
    """For each caption pair and seed, `pipeline.interpolate` frames, and whether every middle frame is no rougher,
    no emptier and (with an `oracle` and its `real_features` [N, F] of real images) no further from the real
    images' mean feature than the worse of the two ends, within `tolerance` (relative).
    """
    centre = real_features.mean(0) if real_features is not None else None
    rows = []
    for prompt_a, prompt_b in pairs:
        for seed in seeds:
            frames = pipeline.interpolate(prompt_a, prompt_b, num_steps=num_steps, generator=torch.Generator().manual_seed(seed),
                                          output_type="pt").images.float().cpu()
            rough, share = roughness(frames), flower_pixel_share(frames)
            row = {"prompt_a": prompt_a, "prompt_b": prompt_b, "seed": seed, "roughness": rough.tolist(), "flower_share": share.tolist()}
            ok = bool(rough[1:-1].max() <= (1 + tolerance) * rough[[0, -1]].max()
                      and share[1:-1].min() >= (1 - tolerance) * share[[0, -1]].min())
            if oracle is not None and centre is not None:
                features = oracle.predict(frames * 2 - 1)[1]
                distance = (features - centre).norm(dim=1)
                row["feature_distance"] = distance.tolist()
                ok &= bool(distance[1:-1].max() <= (1 + tolerance) * distance[[0, -1]].max())
            row["passes"] = ok
            rows.append(row)
    return {"strips": rows, "passed": sum(r["passes"] for r in rows), "total": len(rows), "tolerance": tolerance, "num_steps": num_steps}


def real_references(oracle, resolution: int = 64) -> tuple[dict[str, float], torch.Tensor]:
    """What both checks compare with, rendered once per protocol: the real images' statistics at `resolution`
    (`real_image_statistics`) and `oracle`'s features [256, F] of 256 rendered real images at its 64 px."""
    from .oracle import oracle_training_set

    real, _ = oracle_training_set(256, seed=54321, num_proc=1)
    return real_image_statistics(resolution), oracle.predict(augment_batch(real, 64, train=False))[1]


def robustness_report(pipeline, oracle, reference: dict[str, float], real_features: torch.Tensor) -> dict:
    """Both checks on `pipeline`: `{"free_text": ..., "interpolation": ...}` (`free_text_report` on
    `free_text_prompts()`, `interpolation_report` on `INTERPOLATION_PAIRS`), against `real_references` at the
    generator's resolution; the feature distance is judged by `oracle` only where the generator draws at its 64 px."""
    resolution = pipeline.generator.config.resolution
    return {"free_text": free_text_report(pipeline, free_text_prompts(), reference),
            "interpolation": interpolation_report(pipeline, oracle=oracle if resolution == 64 else None, real_features=real_features)}


def main(argv: list[str] | None = None) -> dict:
    """Run both checks on one model; print a summary and write JSON with every figure."""
    from ..pipeline import GanClsPipeline
    from .oracle import load_oracle

    parser = argparse.ArgumentParser(prog="python -m t2i.evaluation.robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder or Hub model id")
    parser.add_argument("--out", default=None, help="JSON with every figure")
    parser.add_argument("--oracle_dir", default=None, help="attribute oracle for the feature distance (default: the shipped one)")
    parser.add_argument("--strip", default=None, help="also save a PNG: one interpolation strip per caption pair (seed 0)")
    parser.add_argument("--update_model_card", action="store_true",
                        help="add the pass rates to the local model folder's README.md (a train_accelerate.py output)")
    args = parser.parse_args(argv)
    pipeline = GanClsPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    oracle = load_oracle(args.oracle_dir)[0]
    reference, real_features = real_references(oracle, pipeline.generator.config.resolution)
    report = {"model": str(args.model), **robustness_report(pipeline, oracle, reference, real_features)}
    free, strips = report["free_text"], report["interpolation"]
    print(f"real images: roughness {reference['roughness_mean']:.1f} (p95 {reference['roughness_p95']:.1f}), "
          f"flower share {reference['flower_share_mean']:.2f}")
    for row in free["prompts"]:
        print(f"{'ok  ' if row['passes'] else 'FAIL'} spread {row['spread']:5.1f}  rough {row['roughness']:5.1f}  "
              f"flower {row['flower_share']:.2f}  {row['prompt'][:70]}")
    print(f"free text: {free['passed']} / {free['total']} prompts pass; interpolation: {strips['passed']} / {strips['total']} strips pass")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.strip:
        save_interpolation_strips(pipeline, INTERPOLATION_PAIRS, args.strip)
    if args.update_model_card:
        from .report import add_to_model_card

        rates = {"free_text_pass_rate": free["passed"] / free["total"], "interpolation_strip_pass_rate": strips["passed"] / strips["total"]}
        print(f"Updated {add_to_model_card(args.model, rates)}")
    return report


def save_interpolation_strips(pipeline, pairs: Sequence[tuple[str, str]], path: str | Path, num_steps: int = 8, seed: int = 0) -> Path:
    """A PNG with one row per caption pair: `pipeline.interpolate` from the first caption to the second."""
    from diffusers.utils import make_image_grid

    images = []
    for prompt_a, prompt_b in pairs:
        images += pipeline.interpolate(prompt_a, prompt_b, num_steps=num_steps, generator=torch.Generator().manual_seed(seed)).images
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(images, rows=len(pairs), cols=num_steps).save(path)
    return Path(path)


if __name__ == "__main__":
    run_main(main)
