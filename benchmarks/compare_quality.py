"""Evaluate several trained pipelines on the same protocol and print one comparison table.

    python benchmarks/compare_quality.py --dataset /tmp/synth_full --num-samples 2000 \
        --run "GAN-INT-CLS=runs/gan_int_cls" --run "GAN-CLS=runs/gan_cls" --out benchmarks/results/quality_table.json

Each run folder is a `train_accelerate.py` output: the pipeline, plus `training_summary.json` (steps, wall time).
All runs share one attribute oracle (the shipped one, or --oracle_dir), the same captions and seeds.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2i import GanClsPipeline  # noqa: E402
from t2i.cli import named_path, run_main
from t2i.data import load_captioned_dataset  # noqa: E402
from t2i.evaluation import evaluate_pipeline, load_oracle  # noqa: E402
from t2i.text_pretraining.joint_embedding import load_joint_image_encoder  # noqa: E402

COLUMNS = (
    ("petal colour", lambda r: r["agreement_generated"]["petal_color"]),
    ("centre colour", lambda r: r["agreement_generated"]["center_color"]),
    ("count bin", lambda r: r["agreement_generated"]["petal_count_word"]),
    ("shape", lambda r: r["agreement_generated"]["petal_shape"]),
    ("secondary colour", lambda r: r["agreement_generated"]["secondary_color"]),
    ("all stated", lambda r: r["agreement_generated"]["all"]),
    ("FD / real-vs-real", lambda r: r["frechet_distance"]["ratio"]),
    ("diversity / real", lambda r: r["diversity"]["ratio"]),
    ("R-precision", lambda r: r["r_precision"]["generated"] if r["r_precision"] else None),
)


def table(rows: list[dict]) -> str:
    """Markdown: one row per run, with its training steps and wall time."""
    header = "| run | steps | train wall time | " + " | ".join(name for name, _ in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 3) + "|"]
    for row in rows:
        cells = [f"{value:.3f}" if value is not None else "n/a" for value in (get(row["results"]) for _, get in COLUMNS)]
        lines.append(f"| {row['name']} | {row['steps']} | {row['wall_minutes']:.1f} min | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run", action="append", required=True, type=named_path, help="NAME=FOLDER, repeatable")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle_dir", default=None)
    parser.add_argument("--out", default=None, help="JSON with every run's full results; the table goes next to it (.md)")
    args = parser.parse_args()

    train, test = load_captioned_dataset(args.dataset, "train"), load_captioned_dataset(args.dataset, "test")
    oracle, oracle_dir = load_oracle(args.oracle_dir)
    rows = []
    for name, folder in args.run:
        if not (Path(folder) / "training_summary.json").is_file():
            raise FileNotFoundError(f"--run {name}={folder}: no training_summary.json there (the folder a finished "
                                    "train_accelerate.py run saves its pipeline in)")
        summary = json.loads((Path(folder) / "training_summary.json").read_text())
        results = evaluate_pipeline(
            GanClsPipeline.from_pretrained(folder), test, train, oracle, num_samples=args.num_samples, seed=args.seed,
            joint_image_encoder=load_joint_image_encoder(folder),
        )
        rows.append({"name": name, "folder": folder, "steps": summary["training_steps"],
                     "wall_minutes": summary["wall_time_hours"] * 60, "results": results})
        print(f"{name}: {results['agreement_generated']['all']:.3f} all stated, {results['seconds']:.0f} s to evaluate", flush=True)
    markdown = table(rows)
    print(markdown)
    if args.out:
        Path(args.out).write_text(json.dumps({"dataset": args.dataset, "oracle_dir": str(oracle_dir), "runs": rows}, indent=2))
        Path(args.out).with_suffix(".md").write_text(markdown)


if __name__ == "__main__":
    run_main(main)
