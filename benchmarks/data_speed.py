"""Data pipeline speed: synthetic generation, loader throughput (the uint8-tensor path training uses), embedding cache.

    python benchmarks/data_speed.py --out results/data_speed.json            # full: 8,189 images at 128 px
    python benchmarks/data_speed.py --num-images 500 --out /tmp/quick.json   # a quick look

Prints a summary and writes every number to the JSON file given by --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from t2i.cli import run_main  # noqa: E402
from t2i.data import (  # noqa: E402
    CaptionEmbeddings,
    TensorBatchLoader,
    images_to_uint8,
    load_captioned_dataset,
    load_or_build_caption_embeddings,
    load_size_for,
)
from t2i.datasets import generate_synthetic_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--num-images", type=int, default=8189)
    parser.add_argument("--resolution", type=int, default=128, help="resolution of the generated images")
    parser.add_argument("--train-resolution", type=int, default=64, help="crop size of the loaders")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-proc", type=int, default=None, help="generation workers (default: all cores)")
    parser.add_argument("--dataset", default=None, help="use this existing dataset folder instead of generating one")
    parser.add_argument("--skip-encoders", action="store_true", help="skip the embedding-cache timings")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser.parse_args()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_generation(args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    out, seconds = timed(generate_synthetic_dataset, work / "synthetic", args.num_images, 0, args.resolution, args.num_proc)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return out, {
        "num_images": args.num_images, "resolution": args.resolution, "seconds": round(seconds, 2),
        "images_per_s": round(args.num_images / seconds, 1), "bytes_on_disk": size,
    }


def bench_fast_path(train, embeddings: CaptionEmbeddings, args: argparse.Namespace) -> dict:
    labels = torch.tensor(train["label"])
    images, decode_seconds = timed(images_to_uint8, train, load_size_for(args.train_resolution))
    loader = TensorBatchLoader(images, embeddings, labels, args.batch_size, args.train_resolution,
                               generator=torch.Generator().manual_seed(0))
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["pixel_values"])
    seconds = time.perf_counter() - start
    return {
        "decode_once_seconds": round(decode_seconds, 2), "tensor_mb": round(images.numel() / 2**20, 1),
        "epoch_seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1),
    }


def bench_cache(train, encoder_name: str, make_encoder, cache_dir: Path) -> dict:
    encoder, load_seconds = timed(make_encoder)
    captions = train["captions"]
    total = sum(len(c) for c in captions)
    unique = len({c for cs in captions for c in cs})
    embeddings, build_seconds = timed(load_or_build_caption_embeddings, train, encoder, cache_dir)
    _, hit_seconds = timed(load_or_build_caption_embeddings, train, encoder, cache_dir)
    return {
        "encoder": encoder_name, "embedding_dim": embeddings.dim, "captions": total, "distinct_captions": unique,
        "load_encoder_seconds": round(load_seconds, 2), "build_seconds": round(build_seconds, 2),
        "captions_per_s": round(total / build_seconds, 1), "hit_seconds": round(hit_seconds, 3),
    }


def encoders() -> dict:
    """The encoders to time; an unavailable one is reported instead of failing the benchmark."""
    from t2i.text_encoders import TextEncoder, build_char_cnn_rnn

    def char_cnn_rnn():
        torch.manual_seed(0)  # a default, untrained char-CNN-RNN: same speed as a trained one
        return build_char_cnn_rnn()

    return {
        "sentence-transformers/all-MiniLM-L6-v2": lambda: TextEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2"),
        "char-cnn-rnn (default config)": char_cnn_rnn,
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()},
    }
    with tempfile.TemporaryDirectory(prefix="t2i-data-speed-") as tmp:
        work = Path(tmp)
        if args.dataset:
            folder = Path(args.dataset)
        else:
            folder, results["synthetic_generation"] = bench_generation(args, work)
            print(f"generation: {results['synthetic_generation']}", flush=True)

        train = load_captioned_dataset(folder, "train", cache_dir=str(work / "hf-cache"))
        counts = torch.tensor([len(c) for c in train["captions"]])
        # Loader timings use stand-in embeddings of MiniLM's size: they measure the loop, not an encoder.
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        embeddings = CaptionEmbeddings(torch.randn(int(offsets[-1]), 384), offsets)
        results["loader"] = {
            "split": "train", "images": len(train), "batch_size": args.batch_size, "resolution": args.train_resolution,
            "fast_path": bench_fast_path(train, embeddings, args),
        }
        print(f"loader: {json.dumps(results['loader'], indent=1)}", flush=True)

        if not args.skip_encoders:
            results["embedding_cache"] = []
            for name, make_encoder in encoders().items():
                try:
                    entry = bench_cache(train, name, make_encoder, work / "embedding-cache")
                except Exception as error:  # e.g. the MiniLM package is not installed
                    entry = {"encoder": name, "error": f"{type(error).__name__}: {error}"}
                results["embedding_cache"].append(entry)
                print(f"embedding cache: {entry}", flush=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
