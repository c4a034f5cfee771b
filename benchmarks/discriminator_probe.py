"""Which stated values does a trained discriminator check? Swap one value in true captions and see if D notices.

For real images of a split, take a caption that states the attribute (centre colour, say) once, swap that word
for another value of its kind (`t2i.data.swap_stated_word`), and score the image against both captions with the
checkpoint's discriminator. A discriminator that checks the value ranks the true caption higher; one that only
recognises the class or the petal colour ranks them at chance (50 %). The generator learns only what D checks,
so this says which attributes a run can learn at all, and on the test split whether D checks them on unseen
attribute combinations or has memorised the training classes.

    python benchmarks/discriminator_probe.py --checkpoint RUN/checkpoint-4775 --dataset /work/data/synth \
        --text_encoder pretrained --split test --split train --out benchmarks/results/discriminator_probe.json

The discriminator's config is read off the checkpoint's weights (`model_1.safetensors`, as `accelerate` saves
it). ``--text_encoder`` must be the encoder the run trained with; nothing can check that. D runs in training mode, as in every GAN step: its BatchNorm uses batch statistics, 64 images at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, without installing t2i
from t2i import GanClsDiscriminator, GanClsPipeline
from t2i.cli import run_main
from t2i.data import images_to_uint8, load_captioned_dataset, swap_stated_word
from t2i.datasets.synthetic_captions import caption_attributes
from t2i.text_encoders import encode_text

ATTRIBUTES = ("petal_color", "center_color", "petal_count_word", "petal_shape", "secondary_color")
BATCH = 64


def load_checkpoint_discriminator(checkpoint: Path) -> GanClsDiscriminator:
    """The discriminator saved in a training checkpoint folder (``RUN/checkpoint-N``).

    Raises:
        FileNotFoundError: no such folder, or no ``model_1.safetensors`` in it (with a hint for a run folder).
        ValueError: the file is not a readable safetensors file, or holds no discriminator.
    """
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such folder")
    weights = checkpoint / "model_1.safetensors"
    if not weights.is_file():
        inside = sorted((p.name for p in checkpoint.glob("checkpoint-*") if p.name[11:].isdigit()), key=lambda name: int(name[11:]))
        hint = f"; it is a run folder, pass one of its checkpoints, e.g. {checkpoint / inside[-1]}" if inside else ""
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no model_1.safetensors (the discriminator accelerate saves){hint}")
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types for bad headers and short files
        raise ValueError(f"{weights} is not a readable safetensors file ({error})") from error
    if "image_encoder.0.weight" not in state and "image_encoder.0.parametrizations.weight.original" not in state:
        raise ValueError(f"{weights} holds no GanClsDiscriminator state (keys such as {sorted(state)[:3]})")
    return discriminator_from_weights(state)


def discriminator_from_weights(state: dict[str, torch.Tensor]) -> GanClsDiscriminator:
    """A `GanClsDiscriminator` whose config matches a saved state dict, with the weights loaded."""
    spectral = any("parametrizations" in key for key in state)
    first = state["image_encoder.0.parametrizations.weight.original" if spectral else "image_encoder.0.weight"]
    text = state["text_projection.0.parametrizations.weight.original" if spectral else "text_projection.0.weight"]
    num_down = len({key.split(".")[1] for key in state if key.startswith("image_encoder.") and state[key].dim() == 4})
    regions = state.get("region_masks.parametrizations.weight.original" if spectral else "region_masks.weight")
    discriminator = GanClsDiscriminator(
        text_embed_dim=text.shape[1], text_proj_dim=text.shape[0], ndf=first.shape[0], resolution=4 * 2**num_down,
        in_channels=first.shape[1], num_classes=state["class_head.weight"].shape[0] if "class_head.weight" in state else 0,
        text_batch_norm="text_projection.1.running_mean" in state,
        conditioning="projection" if any(key.startswith("text_to_features") for key in state) else "concat",
        projection_scales=1 + len({key.split(".")[1] for key in state if key.startswith("finer_text_to_features.")}),
        spectral_norm=spectral, first_conv_bias="image_encoder.0.bias" in state,
        projection_regions=0 if regions is None else regions.shape[0],
    )
    discriminator.load_state_dict(state)
    return discriminator


def swapped_pairs(dataset, attribute: str, rng: np.random.Generator, limit: int) -> tuple[list[int], list[str], list[str]]:
    """Up to ``limit`` (image index, true caption, caption with ``attribute``'s one word swapped), one per image."""
    rows, true, swapped = [], [], []
    for index, captions in enumerate(dataset["captions"]):
        for caption in captions:
            stated = caption_attributes(caption).get(attribute)
            if not stated or len(stated) != 1:
                continue
            edited = swap_stated_word(caption, next(iter(stated)), rng)
            if edited is None or caption_attributes(edited).get(attribute) == stated:
                continue
            rows.append(index), true.append(caption), swapped.append(edited)
            break
        if len(rows) == limit:
            break
    return rows, true, swapped


@torch.no_grad()
def probe(discriminator, pipeline, dataset, images: torch.Tensor, attribute: str, seed: int, limit: int) -> dict:
    rows, true, swapped = swapped_pairs(dataset, attribute, np.random.default_rng(seed), limit)
    if len(rows) < BATCH:  # D's BatchNorm needs a training-sized batch
        return {"pairs": len(rows), "skipped": f"fewer than {BATCH} images with such a caption"}
    rows, true, swapped = rows[: len(rows) // BATCH * BATCH], true[: len(rows) // BATCH * BATCH], swapped[: len(rows) // BATCH * BATCH]
    true_embeds = encode_text(pipeline.tokenizer, pipeline.text_encoder, true)
    swapped_embeds = encode_text(pipeline.tokenizer, pipeline.text_encoder, swapped)
    margins = []
    for start in range(0, len(rows), BATCH):
        part = slice(start, start + BATCH)
        logits = discriminator(images[rows[part]], torch.cat([true_embeds[part], swapped_embeds[part]])).logits.float()
        margins.append(logits[:BATCH] - logits[BATCH:])
    margins = torch.cat(margins)
    return {
        "pairs": len(rows),
        "true_ranked_higher": (margins > 0).float().mean().item(),
        "mean_logit_margin": margins.mean().item(),
        "text_cosine": torch.nn.functional.cosine_similarity(true_embeds, swapped_embeds).mean().item(),
        "example": [true[0], swapped[0]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a training checkpoint folder, RUN/checkpoint-N (it holds D; pretrained/ does not); repeat to compare")
    parser.add_argument("--dataset", required=True, help="the synthetic set (python -m t2i.datasets synth)")
    parser.add_argument("--text_encoder", required=True, help="the model folder whose text encoder the run trained with")
    parser.add_argument("--split", action="append", help="splits to probe (repeat; default test)")
    parser.add_argument("--num_images", type=int, default=512,
                        help=f"images per attribute and split (at most; used in whole batches of {BATCH}, so at least {BATCH})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    if args.num_images < BATCH:
        parser.error(f"--num_images must be at least {BATCH} (one batch: D's BatchNorm uses batch statistics), got {args.num_images}")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: no such folder {args.out.parent}")
    try:
        discriminators = {checkpoint: load_checkpoint_discriminator(Path(checkpoint)).train() for checkpoint in args.checkpoint}
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    try:
        # The probe embeds captions with this encoder: it must be the one the run trained with (not checked).
        pipeline = GanClsPipeline.from_pretrained(args.text_encoder)
        datasets = {split: load_captioned_dataset(args.dataset, split) for split in args.split or ["test"]}
    except (OSError, ValueError, KeyError) as error:
        parser.error(str(error))

    torch.manual_seed(args.seed)
    results = {}
    for split, dataset in datasets.items():
        for checkpoint, discriminator in discriminators.items():
            images = images_to_uint8(dataset, discriminator.config.resolution).float().div(127.5).sub(1)
            for attribute in ATTRIBUTES:
                torch.manual_seed(args.seed)
                result = probe(discriminator, pipeline, dataset, images, attribute, args.seed, args.num_images)
                results.setdefault(checkpoint, {}).setdefault(split, {})[attribute] = result
                verdict = result.get("skipped") or (f"true ranked higher {result['true_ranked_higher']:.3f}  "
                                                    f"margin {result['mean_logit_margin']:+.2f}")
                print(f"{checkpoint} {split:5s} {attribute:17s} pairs {result['pairs']:4d}  {verdict}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"seed": args.seed, "num_images": args.num_images, "results": results}, indent=1))


if __name__ == "__main__":
    run_main(main)
