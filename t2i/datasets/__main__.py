"""Build datasets from the command line.

    python -m t2i.datasets synth --out DIR [--num-images 8189] [--seed 0] [--resolution 128] [--num-proc N]
    python -m t2i.datasets oxford --images 102flowers.tgz --captions cvpr2016_flowers.tar.gz --out DIR

Both accept `--push_to_hub USER/REPO [--private]` to upload the result as a Hub dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import logging
import time

from ..data.loading import push_dataset_folder
from .oxford import build_oxford_dataset
from .synthetic import generate_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the `synth` / `oxford` sub-commands."""
    parser = argparse.ArgumentParser(
        prog="python -m t2i.datasets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="render the synthetic captioned-flowers dataset")
    synth.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=8189)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--resolution", type=int, default=128)
    synth.add_argument("--num-proc", "--num_proc", dest="num_proc", type=int, default=None, help="default: all cores")

    oxford = commands.add_parser("oxford", help="build Oxford-102 + Reed captions from the raw downloads")
    oxford.add_argument("--images", required=True, help="102flowers.tgz, or a folder containing jpg/")
    oxford.add_argument("--captions", required=True, help="cvpr2016_flowers archive or folder (text_c10/, *classes.txt)")

    for command in (synth, oxford):
        command.add_argument("--out", required=True, help="output folder (parquet shards + README.md)")
        command.add_argument("--push_to_hub", "--push-to-hub", dest="push_to_hub", metavar="REPO", default=None)
        command.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)
    # Both splits need images; below 40 the seeded split may leave the test split empty.
    if args.command == "synth" and args.num_images < 40:
        parser.error(f"--num-images must be at least 40 (train and test splits both need images), got {args.num_images}")
    if args.command == "synth" and (args.num_proc is not None and args.num_proc < 1):
        parser.error(f"--num-proc must be ≥ 1, got {args.num_proc}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out!r} is a file, not a folder")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m t2i.datasets`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    if args.command == "synth":
        generate_synthetic_dataset(args.out, args.num_images, args.seed, args.resolution, args.num_proc)
        print(f"wrote {args.num_images} synthetic images to {args.out} in {time.perf_counter() - start:.1f} s")
    else:
        report = build_oxford_dataset(args.images, args.captions, args.out)
        print(report.summary())
        print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    if args.push_to_hub:
        print(f"pushed to {push_dataset_folder(args.out, args.push_to_hub, private=args.private)}")


if __name__ == "__main__":
    main()
