"""Command-line tools for training checkpoints: ``python -m t2i.training convert CHECKPOINT...`` rewrites checkpoints
written before t2i saved optimizer and random states as safetensors (see `t2i.training.checkpoints`)."""

import argparse
from pathlib import Path

from t2i.hub import CheckpointError
from t2i.training.checkpoints import convert_legacy_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m t2i.training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="rewrite checkpoints' pickled accelerate state as safetensors (once, for checkpoints "
                                                  "written before t2i saved them so)")
    convert.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint-N folders")
    args = parser.parse_args(argv)
    missing = [str(c) for c in args.checkpoints if not (c / "training_state.json").is_file()]
    if missing:
        parser.error(f"not a training checkpoint (no training_state.json): {', '.join(missing)}")
    for checkpoint in args.checkpoints:
        try:
            converted = convert_legacy_checkpoint(checkpoint)
            print(f"{checkpoint}: converted {', '.join(converted)}" if converted else f"{checkpoint}: already safetensors only")
        except CheckpointError as error:
            parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
