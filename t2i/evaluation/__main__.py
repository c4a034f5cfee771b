"""python -m t2i.evaluation: evaluate one model on the synthetic set and print (and save) the table."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..cli import run_main
from ..data import load_captioned_dataset
from ..text_pretraining.joint_embedding import load_joint_image_encoder
from ..pipeline import GanClsPipeline
from . import __doc__ as PACKAGE_DOC
from .metrics import evaluate_pipeline
from .oracle import check_attributes, load_oracle, load_or_train_oracle
from .report import example_captions, results_markdown, save_sample_grid, update_model_card

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags of `python -m t2i.evaluation`."""
    parser = argparse.ArgumentParser(prog="python -m t2i.evaluation", description=PACKAGE_DOC.split("\n\n")[0])
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
    pipeline = GanClsPipeline.from_pretrained(args.model)  # first: a missing model fails before the data is read
    test_dataset = load_captioned_dataset(args.dataset, args.split)
    train_dataset = load_captioned_dataset(args.dataset, args.train_split)
    check_attributes(test_dataset)
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
    run_main(main)
