"""What the soft masks of a generator with `--fusion_masks K` or `--output_palette K` follow: the masks it predicts at
each fused layer and the palette's regions at the output, drawn beside the images, and where each mask's weight lies.

For each layer and mask it reports the mask's share of the image (its mean weight), how sure the masks are (the mean
of the largest weight at a position: 1/K when they are uniform, 1 when each position has one mask), its mean
distance from the image centre in units of the half-width (`t2i.models.polar_coordinates`' radius; the synthetic
flowers are centred: a centre-disc mask sits near 0.2, the petals near 0.5, the background corners beyond 0.8, and
uniform masks at 0.77) and the share of its weight on flower pixels
of the generated image (`t2i.evaluation.robustness.flower_pixel_mask`). Masks that follow the parts differ in
distance and flower share; masks that learned nothing are uniform.

    python benchmarks/fusion_masks.py --model RUN --out benchmarks/results/fusion_masks.json --image masks.png

The PNG has one row per caption and seed: the image, then each layer's masks as one RGB picture (mask k in
colour channel k; with more than three masks only the first three are shown), up-sampled to the image's size.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from t2i import GanClsPipeline
from t2i.cli import run_main
from t2i.evaluation.robustness import flower_pixel_mask
from t2i.models import polar_coordinates, soft_masks

CAPTIONS = (
    "a yellow centre surrounded by six oval white petals",
    "a black center surrounded by many oval yellow petals",
    "this flower has five pointed purple petals and a yellow center",
    "the several round petals are turquoise with purple rims",
)


def masks_and_images(pipeline: GanClsPipeline, captions: list[str], seeds: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images [N, 3, H, W] in [0, 1] and the masks [N, K, h, w] the generator weighs its terms by (`soft_masks` of
    its predictors' logits): one per fused layer, then the palette's regions, for every caption with every seed
    (N = len(captions) · len(seeds), caption-major).

    Raises:
        ValueError: the pipeline's generator has neither fusion masks nor an output palette.
    """
    generator = pipeline.generator
    predictors = [*getattr(generator, "fusion_mask_predictors", []), *([generator.palette_masks] if hasattr(generator, "palette_masks") else [])]
    if not predictors:
        raise ValueError("this generator has no fusion masks and no output palette: train one with --deep_fusion "
                         "--fusion_masks K or --output_palette K")
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda module, inputs, output: captured.append(soft_masks(output).float()))
             for layer in predictors]
    try:
        noise = torch.stack([torch.randn(generator.config.noise_dim, generator=torch.Generator().manual_seed(seed))
                             for seed in seeds])
        embeds = pipeline.encode_prompt(list(captions)).repeat_interleave(len(seeds), dim=0)
        images = pipeline(prompt_embeds=embeds, latents=noise.repeat(len(captions), 1), output_type="pt").images
    finally:
        for hook in hooks:
            hook.remove()
    return images.float().cpu(), [m.cpu() for m in captured]


def mask_statistics(images: torch.Tensor, masks: list[torch.Tensor]) -> list[dict]:
    """Per layer: its size, how sure its masks are, and per mask its share, distance from the centre and flower share
    (see the module docstring). ``images`` [N, 3, H, W] in [0, 1]; ``masks`` per layer [N, K, h, w]."""
    flower = flower_pixel_mask(images).float()[:, None]  # [N, 1, H, W]
    layers = []
    for layer_masks in masks:
        size = layer_masks.shape[-1]
        full = F.interpolate(layer_masks, size=images.shape[-2:], mode="bilinear", align_corners=False)
        radius = polar_coordinates(images.shape[-1], 0)[0]  # [H, W], 1 at the middle of each edge
        weight = full.sum(dim=(0, 2, 3)).clamp_min(1e-8)  # [K]
        layers.append({
            "resolution": size,
            "max_weight_mean": float(layer_masks.amax(dim=1).mean()),
            "masks": [{
                "share": float(full[:, k].mean()),
                "distance_from_centre": float((full[:, k] * radius).sum() / weight[k]),
                "flower_share": float((full[:, k:k + 1] * flower).sum() / weight[k]),
            } for k in range(layer_masks.shape[1])],
        })
    return layers


def mask_grid(images: torch.Tensor, masks: list[torch.Tensor]) -> Image.Image:
    """One row per image: the image, then each layer's first three masks as RGB, nearest-up-sampled to its size."""
    size = images.shape[-1]
    tiles = [images]
    for layer_masks in masks:
        rgb = torch.zeros(layer_masks.shape[0], 3, *layer_masks.shape[-2:])
        rgb[:, :min(3, layer_masks.shape[1])] = layer_masks[:, :3]
        tiles.append(F.interpolate(rgb, size=size, mode="nearest"))
    rows = torch.cat(tiles, dim=3)  # [N, 3, H, W · (1 + layers)]
    grid = torch.cat(list(rows), dim=1)  # [3, N · H, W · (1 + layers)]
    return Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved pipeline whose generator has --fusion_masks K or --output_palette K")
    parser.add_argument("--captions", nargs="+", default=list(CAPTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, help="JSON of the statistics")
    parser.add_argument("--image", type=Path, help="PNG of the images and their masks")
    args = parser.parse_args()
    pipeline = GanClsPipeline.from_pretrained(args.model)
    images, masks = masks_and_images(pipeline, args.captions, args.seeds)
    layers = mask_statistics(images, masks)
    for layer in layers:
        kind = "output palette" if layer["resolution"] == images.shape[-1] else "fusion masks"
        print(f"{kind}, {layer['resolution']}×{layer['resolution']}: mean largest weight {layer['max_weight_mean']:.3f} "
              f"(uniform {1 / len(layer['masks']):.3f})")
        for k, mask in enumerate(layer["masks"]):
            print(f"  mask {k}: share {mask['share']:.3f}, distance from centre {mask['distance_from_centre']:.3f}, "
                  f"flower share {mask['flower_share']:.3f}")
    if args.image:
        mask_grid(images, masks).save(args.image)
        print(f"wrote {args.image}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "captions": args.captions, "seeds": args.seeds, "layers": layers}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
