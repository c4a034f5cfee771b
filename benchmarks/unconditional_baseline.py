"""Diagnostic: can a plain unconditional DCGAN draw the synthetic flowers on this budget?

The text-conditional generators of docs/results.md draw blobs after thousands of steps. This script trains
pytorch/examples' DCGAN (Radford et al., ICLR 2016: transposed convolutions, BatchNorm, BCE, Adam 2e-4 / β₁ 0.5)
with no text at all on the same images, at the same resolution, batch and precision, and scores it with the same
instrument: Fréchet distance in the attribute oracle's features over the real train-vs-test distance, and the
robustness checks' roughness and flower-pixel share. If it draws petals where the conditional models do not, the
conditional machinery, not the data or the budget, is what holds them back.

    python benchmarks/unconditional_baseline.py --dataset /work/data/synth --max_train_minutes 15 \
        --output_dir /work/runs/dcgan_uncond --ngf 64 --ndf 64

Prints a JSON summary and writes it to OUTPUT_DIR/summary.json, with sample grids at every ``--grid_steps``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn


def dcgan_generator(noise_dim: int, ngf: int) -> nn.Sequential:
    """pytorch/examples dcgan/main.py's generator: z [B, noise_dim, 1, 1] → [B, 3, 64, 64] in [-1, 1]."""
    def up(i, o, stride=2, pad=1):
        return [nn.ConvTranspose2d(i, o, 4, stride, pad, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)]
    return nn.Sequential(*up(noise_dim, ngf * 8, 1, 0), *up(ngf * 8, ngf * 4), *up(ngf * 4, ngf * 2), *up(ngf * 2, ngf),
                         nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())


def dcgan_discriminator(ndf: int) -> nn.Sequential:
    """pytorch/examples dcgan/main.py's discriminator: [B, 3, 64, 64] → [B] logits."""
    def down(i, o, norm=True):
        return [nn.Conv2d(i, o, 4, 2, 1, bias=False), *( [nn.BatchNorm2d(o)] if norm else []), nn.LeakyReLU(0.2, True)]
    return nn.Sequential(*down(3, ndf, norm=False), *down(ndf, ndf * 2), *down(ndf * 2, ndf * 4), *down(ndf * 4, ndf * 8),
                         nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Flatten(0))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the synthetic set (python -m t2i.datasets synth)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_train_minutes", type=float, default=15.0)
    parser.add_argument("--max_train_steps", type=int, default=100_000)
    parser.add_argument("--train_batch_size", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--noise_dim", type=int, default=100)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--grid_steps", type=int, default=250)
    parser.add_argument("--num_samples", type=int, default=1000, help="generated images scored at the end")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, low in (("max_train_steps", 1), ("train_batch_size", 2), ("grid_steps", 1), ("num_samples", 2), ("ngf", 1), ("ndf", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be ≥ {low}, got {getattr(args, name)}")
    if not args.max_train_minutes > 0:
        parser.error(f"--max_train_minutes must be > 0, got {args.max_train_minutes}")
    return args


def main(argv=None) -> dict:
    from t2i.data import augment_batch, images_to_uint8, load_captioned_dataset, load_size_for
    from t2i.evaluation.metrics import frechet_distance_and_real_reference
    from t2i.evaluation.oracle import ORACLE_RESOLUTION, load_oracle
    from t2i.evaluation.robustness import flower_pixel_share, real_image_statistics, roughness
    from t2i.models import dcgan_init_

    args = parse_args(argv)
    # Both splits before any work: a missing folder or test split fails now, not after the training minutes.
    dataset = {split: load_captioned_dataset(args.dataset, split) for split in ("train", "test")}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = torch.Generator().manual_seed(args.seed)
    train = images_to_uint8(dataset["train"], load_size_for(64))

    generator, discriminator = dcgan_generator(args.noise_dim, args.ngf), dcgan_discriminator(args.ndf)
    dcgan_init_(generator), dcgan_init_(discriminator)
    generator, discriminator = generator.to(memory_format=torch.channels_last), discriminator.to(memory_format=torch.channels_last)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if args.mixed_precision == "bf16" else contextlib.nullcontext
    fixed_noise = torch.randn(64, args.noise_dim, 1, 1, generator=torch.Generator().manual_seed(1234))

    def save_grid(step: int) -> None:
        from PIL import Image
        generator.eval()
        with torch.no_grad():
            images = ((generator(fixed_noise).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        generator.train()
        grid = images.view(8, 8, 3, 64, 64).permute(0, 3, 1, 4, 2).reshape(512, 512, 3).numpy()
        Image.fromarray(grid).save(out / f"samples_{step:06d}.png")

    started, step, log = time.monotonic(), 0, []
    while step < args.max_train_steps and time.monotonic() - started < 60 * args.max_train_minutes:
        index = torch.randint(len(train), (args.train_batch_size,), generator=rng)
        real = augment_batch(train[index], 64, train=True, generator=rng).contiguous(memory_format=torch.channels_last)
        noise = torch.randn(args.train_batch_size, args.noise_dim, 1, 1, generator=rng)
        with autocast():
            fake = generator(noise)
            real_logits, fake_logits = discriminator(real).float(), discriminator(fake.detach()).float()
            loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()
        with autocast():
            g_logits = discriminator(fake).float()
            loss_g = bce(g_logits, torch.ones_like(g_logits))
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()
        step += 1
        if step % args.grid_steps == 0:
            save_grid(step)
            log.append({"step": step, "minutes": (time.monotonic() - started) / 60, "loss_d": loss_d.item(), "loss_g": loss_g.item()})
            print(json.dumps(log[-1]), flush=True)
    train_seconds = time.monotonic() - started
    save_grid(step)

    # The evaluation's instrument: oracle features, FD against the real test images over train-vs-test.
    oracle, _ = load_oracle()
    generator.eval()
    with torch.no_grad():
        noise = torch.randn(args.num_samples, args.noise_dim, 1, 1, generator=torch.Generator().manual_seed(args.seed + 1))
        generated = torch.cat([generator(chunk).float() for chunk in noise.split(250)]).clamp(-1, 1)
    test = augment_batch(images_to_uint8(dataset["test"], load_size_for(ORACLE_RESOLUTION)), ORACLE_RESOLUTION, train=False)
    with torch.inference_mode():
        _, generated_features = oracle.predict(generated)
        _, test_features = oracle.predict(test)
        fd, fd_real, size = frechet_distance_and_real_reference(oracle, generated_features, test_features, dataset["train"],
                                                                torch.Generator().manual_seed(0))
    if size <= generated_features.shape[1]:
        print(f"warning: {size} samples for {generated_features.shape[1]}-d features: the Fréchet distance is rough "
              "(use --num_samples 1000)", file=sys.stderr)
    reference, generated01 = real_image_statistics(), (generated + 1) / 2
    summary = {
        "generator": f"DCGAN unconditional, ngf {args.ngf}, ndf {args.ndf}", "steps": step, "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(step, 1), "mixed_precision": args.mixed_precision, "seed": args.seed,
        "oracle_frechet_distance": fd, "real_train_vs_real_test": fd_real, "oracle_frechet_distance_over_real": fd / fd_real,
        "roughness": float(roughness(generated01).mean()), "flower_pixel_share": float(flower_pixel_share(generated01).mean()),
        "real": reference, "log": log,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=2))
    return summary


if __name__ == "__main__":
    from t2i.cli import run_main

    run_main(main)
