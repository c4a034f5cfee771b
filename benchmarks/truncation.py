"""The truncation trick (Brock et al., "Large Scale GAN Training for High Fidelity Natural Image Synthesis", ICLR
2019) measured on a trained generator: its noise drawn as ψ·z, z ~ N(0, I), for each ψ, scored on the full protocol
(`t2i.evaluation.evaluate_pipeline`, the shipped oracle) and on the free-text and interpolation checks
(`t2i.evaluation.robustness`), the rows side by side. BigGAN trades diversity for fidelity this way; whether it
buys anything here, and what it costs on prompts unlike the training captions, decides whether the pipeline should
offer it (docs/results.md, "Truncation").

    python benchmarks/truncation.py --model pretrained --dataset data/synthetic-flowers --psi 1.0 0.7 0.5 0.3 \\
        --out benchmarks/results/truncation.json

It prints one JSON line per ψ as it is scored (about 1–4 minutes each on 2 CPU cores), then the markdown table.
"""

import argparse
import json
import math
from pathlib import Path

from t2i import GanClsPipeline
from t2i.cli import run_main
from t2i.data import load_captioned_dataset
from t2i.evaluation import TABLE_COLUMNS, evaluate_pipeline, headline_metrics, load_oracle
from t2i.evaluation.robustness import real_references, robustness_report
from t2i.text_pretraining.joint_embedding import load_joint_image_encoder



class TruncatedPipeline(GanClsPipeline):
    """`GanClsPipeline` whose noise, sampled or interpolated, is ψ·z: ψ = 1 is the plain pipeline, ψ → 0 every seed
    gives the image of z = 0."""

    psi = 1.0

    def prepare_latents(self, *args, **kwargs):
        return self.psi * super().prepare_latents(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder or Hub model id")
    parser.add_argument("--dataset", required=True, help="the synthetic captioned-flowers folder")
    parser.add_argument("--psi", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3],
                        help="noise scales, each finite and > 0 (default: 1.0 0.7 0.5 0.3)")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=2000,
                        help="test captions of the full protocol, one image each (default: 2000)")
    parser.add_argument("--out", default=None, help="JSON with every row (written before the table is printed)")
    args = parser.parse_args()
    if not all(math.isfinite(psi) and psi > 0 for psi in args.psi):
        parser.error(f"--psi values must be finite and > 0, got {args.psi}")
    if args.num_samples < 2:
        parser.error(f"--num-samples must be at least 2, got {args.num_samples}")
    test, train = load_captioned_dataset(args.dataset, "test"), load_captioned_dataset(args.dataset, "train")
    oracle = load_oracle()[0]
    pipeline = TruncatedPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    joint_image_encoder = load_joint_image_encoder(args.model)
    reference, real_features = real_references(oracle, pipeline.generator.config.resolution)  # once, for every ψ
    rows = []
    for psi in args.psi:
        pipeline.psi = psi
        metrics = headline_metrics(evaluate_pipeline(pipeline, test, train, oracle, num_samples=args.num_samples,
                                                         joint_image_encoder=joint_image_encoder))
        report = robustness_report(pipeline, oracle, reference, real_features)
        free = report["free_text"]
        rows.append({"psi": psi, **metrics, "free_text_passed": free["passed"], "free_text_total": free["total"],
                     "free_text_flower_share": sum(r["flower_share"] for r in free["prompts"]) / free["total"],
                     "free_text_failing": [r["prompt"] for r in free["prompts"] if not r["passes"]],
                     "strips_passed": report["interpolation"]["passed"], "strips_total": report["interpolation"]["total"]})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": str(args.model), "num_samples": args.num_samples, "rows": rows}, indent=2))
    lines = ["| ψ | " + " | ".join(label for label, _ in TABLE_COLUMNS) + " | free text | free-text flower share | strips |",
             "|---" * (len(TABLE_COLUMNS) + 4) + "|"]
    for row in rows:
        cells = [f"{row[key]:.3f}" if key in row else "–" for _, key in TABLE_COLUMNS]  # an attribute no sampled caption states
        lines.append(f"| {row['psi']} | " + " | ".join(cells) + f" | {row['free_text_passed']} / {row['free_text_total']} | "
                     f"{row['free_text_flower_share']:.3f} | {row['strips_passed']} / {row['strips_total']} |")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
