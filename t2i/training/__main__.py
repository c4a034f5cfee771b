"""Command-line tools for training checkpoints: ``python -m t2i.training convert CHECKPOINT...`` rewrites checkpoints
written before t2i saved optimizer and random states as safetensors (see `t2i.training.checkpoints`);
``python -m t2i.training grow CHECKPOINT OUTPUT_DIR --deep_fusion`` (or ``--residual_blocks``, ``--fusion_masks K``,
``--output_palette K``) copies a checkpoint with its generator grown by an option that does not change what it draws
(its text terms start at zero), so the run continues with it (``--resume_from_checkpoint latest --output_dir
OUTPUT_DIR`` and the flag); ``python -m t2i.training export CHECKPOINT OUTPUT_DIR [--text_encoder_path DIR] [--generator_dtype float16]``
writes a checkpoint's generator as a pipeline folder that ``GanClsPipeline.from_pretrained`` loads."""

import argparse
import json
import signal
import sys
from pathlib import Path

from t2i.hub import PICKLE_SUFFIXES, CheckpointError
from t2i.models import GROWABLE, MAX_REGIONS, check_region_count
from t2i.training.checkpoints import EXPORT_DTYPES, convert_legacy_checkpoint, export_checkpoint, grow_checkpoint, list_checkpoints


def _count(text: str) -> int:
    try:
        value: int | str = int(text)
    except ValueError:
        value = text
    try:
        return check_region_count("K", value, allow_off=False)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _step(text: str) -> int:
    try:
        step = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a training step (a whole number ≥ 0), got {text!r}") from None
    if step < 0:
        raise argparse.ArgumentTypeError(f"must be a training step (a whole number ≥ 0), got {step}")
    return step


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _disable_progress_bars() -> None:
    """transformers' and diffusers' loading and saving bars: a command that prints one line of result needs none."""
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def _require_checkpoint(parser: argparse.ArgumentParser, checkpoint: Path) -> None:
    """Exit with the subcommand's usage unless ``checkpoint`` is a checkpoint folder (a run folder names its latest)."""
    if not checkpoint.exists():
        parser.error(f"{checkpoint} does not exist: pass a checkpoint-N folder of a run")
    if not (checkpoint / "training_state.json").is_file():
        inside = list_checkpoints(checkpoint) if checkpoint.is_dir() else []
        parser.error(f"{checkpoint} is not a training checkpoint (no training_state.json)"
                     + (f"; its latest checkpoint is {inside[-1]}" if inside else ""))


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
    grow = commands.add_parser(
        "grow", help="copy a checkpoint with its generator grown by an option that keeps what it draws",
        description="Copy CHECKPOINT to OUTPUT_DIR/checkpoint-N with its generator (and EMA generator) grown by the option "
                    "(GanClsGenerator.grow_from_: the added text terms start at zero and a residual branch behind a zero gain, so "
                    "it draws what it drew; the EMA generator gets G's new tensors), G's Adam "
                    "state extended to the new parameters, and the option added to the recorded model flags. Resume it "
                    "with train_accelerate.py --output_dir OUTPUT_DIR --resume_from_checkpoint latest and the option.")
    grow.add_argument("checkpoint", type=Path, help="a checkpoint-N folder")
    grow.add_argument("output_dir", type=Path, help="the new run's folder (the checkpoint, and a text encoder the run trained "
                      "itself, are copied into it)")
    for option, kind in GROWABLE.items():
        if kind is bool:
            grow.add_argument(f"--{option}", dest="options", action="append_const", const=(option, True),
                              help=f"add {option} (train_accelerate.py --{option})")
        else:
            grow.add_argument(f"--{option}", dest="options", action="append", metavar="K",
                              type=lambda text, option=option: (option, _count(text)),
                              help=f"add {option} with K regions, 2 to {MAX_REGIONS} (train_accelerate.py --{option} K)")
    export = commands.add_parser(
        "export", help="write a checkpoint's generator as a pipeline folder",
        description="Write OUTPUT_DIR, a pipeline folder (GanClsPipeline.from_pretrained loads it) whose generator is CHECKPOINT's "
                    "trained G, with the run's text encoder (and its joint image encoder, if any). The folder is written under a "
                    "hidden name, loaded back and checked, and renamed when complete; nothing that exists is replaced.")
    export.add_argument("checkpoint", type=Path, help="a checkpoint-N folder")
    export.add_argument("output_dir", type=Path, help="the pipeline folder to write (must not exist)")
    export.add_argument("--text_encoder_path", type=Path, default=None,
                        help="what the run's --text_encoder_path was: a saved pipeline (e.g. pretrained) or a text-encoder "
                             "folder (default: the run folder holding CHECKPOINT, once the run has saved its pipeline there)")
    export.add_argument("--average_from", type=_step, default=None, metavar="STEP",
                        help="export the mean of G over every checkpoint of CHECKPOINT's run from STEP to CHECKPOINT's step "
                             "(checkpoint averaging; the embedded default is one)")
    export.add_argument("--generator_dtype", choices=list(EXPORT_DTYPES), default="float32",
                        help="the dtype the generator's weights are stored in: float16 halves the file and moves pixels by a "
                             "few levels of 255 at most (loaded as float32)")
    args = parser.parse_args(argv)
    if args.command == "export":
        _require_checkpoint(export, args.checkpoint)
        signal.signal(signal.SIGTERM, _interrupt)  # so the partial folder is removed, as on Ctrl-C
        _disable_progress_bars()
        try:
            folder, difference = export_checkpoint(args.checkpoint, args.output_dir, args.text_encoder_path, EXPORT_DTYPES[args.generator_dtype],
                                                   average_from=args.average_from)
        except (ValueError, CheckpointError, OSError) as error:
            parser.exit(1, f"error: {error}\n")
        except KeyboardInterrupt:
            parser.exit(130, f"interrupted: nothing was written to {args.output_dir}\n")
        averaged = json.loads((folder / "training_summary.json").read_text())["exported_from"]
        what = f"{args.checkpoint}'s generator" if len(averaged) == 1 else f"the mean generator of {len(averaged)} checkpoints ({', '.join(averaged)})"
        print(f"{folder}: {what} in {args.generator_dtype}; its check images differ from the float32 "
              f"weights' by at most {difference * 255:.2f} of 255")
        return
    if args.command == "grow":
        if not args.options or len(args.options) > 1:
            parser.error("grow takes one option: " + " or ".join(f"--{o}" + (" K" if k is int else "") for o, k in GROWABLE.items()))
        _require_checkpoint(grow, args.checkpoint)
        try:
            grown = grow_checkpoint(args.checkpoint, args.output_dir, *args.options[0])
        except (ValueError, CheckpointError, OSError) as error:
            parser.exit(1, f"error: {error}\n")
        option, value = args.options[0]
        print(f"{grown}: {args.checkpoint} with --{option}" + ("" if value is True else f" {value}"))
        return
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
