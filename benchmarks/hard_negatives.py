"""How often GAN-CLS's wrong caption agrees with the right one, per attribute, as `TensorBatchLoader` draws it.

    python benchmarks/hard_negatives.py --dataset /work/data/synth --text_encoder pretrained \
        --out benchmarks/results/hard_negatives.json

With a random wrong caption (``--hard_negatives 1``, Reed's) the two captions seldom state the same value of any
attribute, so a discriminator can reject most wrong pairs on petal colour alone. Hard negatives (the closest of K
other-class captions) agree more often, which leaves the other attributes to check. Read on the synthetic set's
captions (`caption_attributes`), counted where both captions state the attribute.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from t2i.cli import run_main
from t2i.data import TensorBatchLoader, load_captioned_dataset, load_or_build_caption_embeddings  # noqa: E402
from t2i.datasets import caption_attributes  # noqa: E402
from t2i.text_encoders import TextEncoder  # noqa: E402

ATTRIBUTES = ("petal_color", "center_color", "petal_count_word", "secondary_color", "petal_shape")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="the synthetic set (python -m t2i.datasets synth)")
    parser.add_argument("--text_encoder", default="pretrained", help="text encoder or pipeline folder")
    parser.add_argument("--cache_dir", default=None, help="caption-embedding cache (train_accelerate.py's --cache_dir)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 4, 8, 16], help="values of --hard_negatives")
    parser.add_argument("--batches", type=int, default=50, help="batches of 64 per value (at most one epoch)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    return parser.parse_args()


def agreement(train, embeddings, labels: torch.Tensor, hard_negatives: int, batches: int) -> dict:
    captions = [caption for image_captions in train["captions"] for caption in image_captions]
    # The measurement reads only the captions; the loader's crops of these blank images are not looked at.
    images = torch.zeros(len(labels), 3, 64, 64, dtype=torch.uint8)
    loader = TensorBatchLoader(images, embeddings, labels, batch_size=64, resolution=64, hard_negatives=hard_negatives,
                               generator=torch.Generator().manual_seed(0))
    same = dict.fromkeys(ATTRIBUTES, 0)
    stated = dict.fromkeys(ATTRIBUTES, 0)
    cosines = []
    for _, batch in zip(range(batches), loader):  # at most one epoch
        # Each embedding is one cached row: find it (distance 0) to read its caption.
        rows = [torch.cdist(part, embeddings.embeddings).argmin(dim=1) for part in (batch["text_embeds"], batch["wrong_text_embeds"])]
        cosines.append(torch.nn.functional.cosine_similarity(batch["text_embeds"], batch["wrong_text_embeds"]))
        for right, wrong in zip(*(r.tolist() for r in rows)):
            right_attributes, wrong_attributes = caption_attributes(captions[right]), caption_attributes(captions[wrong])
            for name in ATTRIBUTES:
                if name in right_attributes and name in wrong_attributes:
                    stated[name] += 1
                    same[name] += right_attributes[name] == wrong_attributes[name]
    return {"hard_negatives": hard_negatives, "pairs": len(torch.cat(cosines)), "mean_cosine": round(torch.cat(cosines).mean().item(), 4),
            **{f"{name}_agrees": round(same[name] / max(stated[name], 1), 4) for name in ATTRIBUTES},
            **{f"{name}_stated_by_both": stated[name] for name in ATTRIBUTES}}


def main() -> None:
    args = parse_args()
    train = load_captioned_dataset(args.dataset, "train")
    embeddings = load_or_build_caption_embeddings(train, TextEncoder.from_pretrained(args.text_encoder), cache_dir=args.cache_dir)
    labels = torch.tensor(train["label"])
    rows = [agreement(train, embeddings, labels, k, args.batches) for k in args.candidates]
    print("| hard negatives K | mean cosine | " + " | ".join(f"{name} agrees" for name in ATTRIBUTES) + " |")
    print("|---" * (len(ATTRIBUTES) + 2) + "|")
    for row in rows:
        print(f"| {row['hard_negatives']} | {row['mean_cosine']:.3f} | " + " | ".join(f"{row[f'{n}_agrees']:.2f}" for n in ATTRIBUTES) + " |")
    Path(args.out).write_text(json.dumps({"dataset": args.dataset, "text_encoder": args.text_encoder, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
