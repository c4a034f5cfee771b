"""Command-line tools for training checkpoints: ``python -m t2i.training convert CHECKPOINT...`` rewrites checkpoints
written before t2i saved optimizer and random states as safetensors (see `t2i.training.checkpoints`)."""

import argparse
import sys
from pathlib import Path

from t2i.hub import PICKLE_SUFFIXES, CheckpointError
from t2i.training.checkpoints import convert_legacy_checkpoint, list_checkpoints


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m t2i.training", description="Tools for t2i training checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="rewrite older checkpoints' pickled optimizer and random states as safetensors",
        description="Rewrite, in place, the pickled accelerate state of checkpoints written before t2i saved them as "
                    "safetensors only (optimizer*.bin, random_states_*.pkl, scaler.pt) and delete those pickles. They are read "
                    "with torch's weights-only loader, which refuses code; the random streams go into t2i_rng_*.safetensors, and other files are left alone. A conversion killed "
                    "part-way can be run again.")
    convert.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint-N folders (not the run folder)")
    args = parser.parse_args(argv)
    failed = []
    for checkpoint in args.checkpoints:  # one bad checkpoint does not stop the others
        if not (checkpoint / "training_state.json").is_file():
            inside = list_checkpoints(checkpoint) if checkpoint.is_dir() else []
            hint = f"; its checkpoints: {' '.join(str(c) for c in inside)}" if inside else ""
            print(f"error: {checkpoint} is not a training checkpoint (no training_state.json){hint}", file=sys.stderr)
            failed.append(str(checkpoint))
            continue
        try:
            converted = convert_legacy_checkpoint(checkpoint)
        except CheckpointError as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(str(checkpoint))
            continue
        others = sorted(p.name for p in checkpoint.iterdir() if p.suffix in PICKLE_SUFFIXES)
        print(f"{checkpoint}: converted {', '.join(converted)}" if converted else f"{checkpoint}: already safetensors only")
        if others:
            print(f"{checkpoint}: left untouched and never read (not accelerate's state; a resume ignores them): {', '.join(others)}")
    if failed:
        parser.exit(1, f"not converted: {' '.join(failed)}\n")


if __name__ == "__main__":
    main()
