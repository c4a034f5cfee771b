"""The in-training evaluation curves of train_accelerate.py runs (`--evaluation_steps`, `--report_to tensorboard`):
every `eval/*` scalar by step, read back from each run's tensorboard logs, printed as a table and written as JSON.

    python benchmarks/eval_curves.py RUN [RUN ...] --out benchmarks/results/curves.json

A run resumed into the same folder appends to the same logs, so its curve covers every phase there. With
`--previous OLD.json` (an earlier --out) the curves saved there are kept beside the new ones, for runs whose
folders are gone; a run given again is read afresh.
"""

import argparse
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SHOWN = ("petal_color", "center_color", "petal_count_word", "secondary_color", "petal_shape", "mean")


def eval_curve(run: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} of the run's `eval/*` scalars (the `text_image_agreement_` prefix dropped)."""
    curve: dict[int, dict[str, float]] = {}
    for events in sorted(run.glob("logs/**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith("eval/"):
                name = tag.removeprefix("eval/").removeprefix("text_image_agreement_")
                for event in accumulator.Scalars(tag):
                    curve.setdefault(event.step, {})[name] = event.value
    return dict(sorted(curve.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="train_accelerate.py output_dir folders")
    parser.add_argument("--out", type=Path, help="JSON {run folder: {step: {metric: value}}}")
    parser.add_argument("--previous", type=Path, help="an earlier --out JSON whose curves are kept (and printed)")
    args = parser.parse_args()
    if not args.runs and args.previous is None:
        parser.error("give at least one run folder, or --previous")
    curves = {}
    if args.previous is not None:
        try:
            curves = json.loads(args.previous.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--previous {args.previous}: {error}")
        if not isinstance(curves, dict) or not all(isinstance(c, dict) and all(isinstance(v, dict) for v in c.values()) for c in curves.values()):
            parser.error(f"--previous {args.previous} is not an eval_curves.py JSON ({{run: {{step: {{metric: value}}}}}})")
    for run in args.runs:
        if not run.is_dir():
            parser.error(f"{run}: no such run folder")
        curve = eval_curve(run)
        if not curve:
            parser.error(f"{run}: no eval/* scalars under {run}/logs (trained without --evaluation_steps or tensorboard?)")
        curves[str(run.resolve())] = curve  # one key per folder, however its path was typed
    for run, curve in curves.items():
        print(f"\n{run}\n| step | " + " | ".join(SHOWN) + " |\n|---|" + "---|" * len(SHOWN))
        for step, values in sorted(curve.items(), key=lambda item: int(item[0])):
            print(f"| {step} | " + " | ".join(f"{values[k]:.3f}" if k in values else "" for k in SHOWN) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(curves, indent=2))


if __name__ == "__main__":
    main()
