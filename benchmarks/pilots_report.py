"""Score the pilot runs of benchmarks/pilots_v3.sh on one protocol and print the table of docs/results.md.

    python benchmarks/pilots_report.py --dataset data/synthetic-flowers --pilots runs/pilots --out benchmarks/results/pilots_v3.json

Every run (NAME-sSEED folder) gets the same evaluation (the shipped oracle, the same test captions and seeds) and
the same free-text and interpolation checks; the table shows each design's mean over its seeds, and the range.
"""

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from t2i import GanClsPipeline
from t2i.cli import run_main
from t2i.data import load_captioned_dataset
from t2i.evaluation import evaluate_pipeline, headline_metrics, load_oracle
from t2i.evaluation.robustness import real_references, robustness_report

COLUMNS = (
    ("petal", "text_image_agreement_petal_color"), ("centre", "text_image_agreement_center_color"),
    ("count", "text_image_agreement_petal_count_word"), ("secondary", "text_image_agreement_secondary_color"),
    ("mean agreement", "text_image_agreement_mean"), ("FD / real", "oracle_frechet_distance_over_real"),
    ("diversity / real", "diversity_over_real"), ("free text passing", "free_text_passed"),
    ("free-text roughness", "free_text_roughness"), ("strips passing", "strips_passed"),
)


def score(folder: Path, test, train, oracle, reference, real_features, num_samples: int) -> dict:
    pipeline = GanClsPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    metrics = headline_metrics(evaluate_pipeline(pipeline, test, train, oracle, num_samples=num_samples))
    report = robustness_report(pipeline, oracle, reference, real_features)
    free, strips = report["free_text"], report["interpolation"]
    summary = json.loads((folder / "training_summary.json").read_text())
    return {**metrics, "free_text_passed": free["passed"], "free_text_total": free["total"],
            "free_text_roughness": sum(r["roughness"] for r in free["prompts"]) / free["total"],
            "strips_passed": strips["passed"], "strips_total": strips["total"], "steps": summary["training_steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--pilots", required=True, help="the OUT_DIR of pilots_v3.sh")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=1000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--previous", default=None,
                        help="an earlier --out JSON of the same protocol: its runs are kept, not scored again")
    args = parser.parse_args()
    if not Path(args.pilots).is_dir():
        parser.error(f"--pilots {args.pilots}: no such folder (give the OUT_DIR pilots_v3.sh wrote)")
    previous = json.loads(Path(args.previous).read_text()) if args.previous else {"runs": {}, "num_samples": args.num_samples}
    if previous["num_samples"] != args.num_samples:
        parser.error(f"--previous was scored on {previous['num_samples']} samples, not {args.num_samples}")
    test, train = load_captioned_dataset(args.dataset, "test"), load_captioned_dataset(args.dataset, "train")
    oracle = load_oracle()[0]
    reference, real_features = real_references(oracle, 64)
    runs = dict(previous["runs"])
    for folder in sorted(Path(args.pilots).glob("*-s[0-9]*")):
        if (folder / "training_summary.json").is_file() and folder.name not in runs:
            runs[folder.name] = score(folder, test, train, oracle, reference, real_features, args.num_samples)
            print(folder.name, json.dumps(runs[folder.name]))
    by_design = defaultdict(list)
    for name, row in runs.items():
        by_design[re.sub(r"-s\d+$", "", name)].append(row)
    lines = ["| design | seeds | steps | " + " | ".join(label for label, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    for design, rows in by_design.items():
        cells = []
        for _, key in COLUMNS:
            values = [row[key] for row in rows]
            mean = sum(values) / len(values)
            cells.append(f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})" if isinstance(values[0], float) else
                         f"{mean:.1f} / {rows[0][key.replace('passed', 'total')]}")
        steps = "–".join(str(s) for s in sorted({row["steps"] for row in rows}))
        lines.append(f"| {design} | {len(rows)} | {steps} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "reference": reference, "num_samples": args.num_samples}, indent=2))
        Path(args.out).with_suffix(".md").write_text(table)


if __name__ == "__main__":
    run_main(main)
