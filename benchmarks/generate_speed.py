"""Pipeline latency on this machine: 1 and 8 images at 64 px, with and without text encoding.

    python benchmarks/generate_speed.py --out benchmarks/results/generate_speed.json

Rows: a ngf = 64 generator with random weights (speed does not depend on training) behind each text encoder,
and with --model a saved pipeline, e.g. the embedded default: --model pretrained.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from t2i import GanClsGenerator, GanClsPipeline, TextEncoder
from t2i.cli import run_main
from t2i.text_encoders import build_char_cnn_rnn

PROMPT = "this flower has five pointed purple petals and a yellow center"


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def random_pipeline(text_encoder: TextEncoder, channels_last: bool) -> GanClsPipeline:
    """A ngf = 64, 64 px generator with random (seeded) weights behind `text_encoder`."""
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=text_encoder.embedding_dim, ngf=64, resolution=64)
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
    return GanClsPipeline(tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, generator=generator)


def benchmark(name: str, pipeline: GanClsPipeline, repeats: int) -> dict:
    """Median latencies of one pipeline, in ms."""
    results = {}
    for n in (1, 8):
        embeds = pipeline.encode_prompt([PROMPT] * n)
        seed = torch.Generator().manual_seed(0)
        results[f"{n}_images_text_given_ms"] = median_ms(lambda: pipeline(prompt_embeds=embeds, generator=seed, output_type="np"), repeats)
        results[f"{n}_images_with_text_encoding_ms"] = median_ms(lambda: pipeline([PROMPT] * n, generator=seed, output_type="np"), repeats)
        results[f"{n}_images_text_given_pil_ms"] = median_ms(lambda: pipeline(prompt_embeds=embeds, generator=seed, output_type="pil"), repeats)
    results["text_encoding_1_prompt_ms"] = median_ms(lambda: pipeline.encode_prompt(PROMPT), repeats)
    return {"pipeline": name, "ngf": pipeline.generator.config.ngf, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--channels_last", action="store_true", help="run the generator in channels_last memory format")
    parser.add_argument("--model", default=None, help="also time this saved pipeline (folder or Hub id), e.g. pretrained")
    parser.add_argument("--out", default="benchmarks/results/generate_speed.json")
    args = parser.parse_args()

    saved = GanClsPipeline.from_pretrained(args.model) if args.model else None  # a missing model fails before any timing
    rows = [
        benchmark("ngf 64 + char-cnn-rnn (Reed, 1024-d)", random_pipeline(build_char_cnn_rnn(), args.channels_last), args.repeats),
        benchmark("ngf 64 + all-MiniLM-L6-v2 (384-d)", random_pipeline(TextEncoder.from_pretrained(), args.channels_last), args.repeats),
    ]
    if args.model:
        rows.append(benchmark(f"{args.model} (saved pipeline)", saved, args.repeats))
    report = {
        "benchmark": "generate_speed",
        "resolution": 64,
        "device": "cpu",
        "cpu_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "channels_last": args.channels_last,
        "repeats": args.repeats,
        "rows": rows,
    }
    for row in rows:
        print(f"{row['pipeline']}:")
        for key, value in row.items():
            if key.endswith("_ms"):
                print(f"  {key:38s} {value:8.2f} ms")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
