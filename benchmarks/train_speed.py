"""Training throughput: one full GAN-CLS + GAN-INT step (D update + G update) at batch 64, 64 px, ngf = ndf = 64.

    python benchmarks/train_speed.py --out benchmarks/results/train_speed_cpu.json
    python benchmarks/train_speed.py --mixed_precision bf16 --channels_last --torch_compile   # on a GPU

Uses the library's `t2i.training.train_step` (the one `train_accelerate.py` runs) on the data fast path (uint8
images on the device, cached text embeddings), so the figure is what training achieves. Random images and
embeddings: speed does not depend on content. `--fusion affine --conditioning_augmentation --diff_augment
translation cutout --projection_scales 2` measures the model v3 recipe; `--fusion affine --text_batch_norm
--conditioning projection --projection_scales 2 --diff_augment translation cutout --mode_seeking_weight 0.5
--int_captions 3 --mode_seeking_mixtures --polar_harmonics 6 --ngf 32 --ndf 32 --text_embed_dim 384` the t2i-v5
step of the shipped default, and `--residual_blocks` on top the grown generator of model v7.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from t2i import GanClsDiscriminator, GanClsGenerator
from t2i.data import CaptionEmbeddings, TensorBatchLoader
from t2i.diffaugment import DIFF_AUGMENT_POLICIES
from t2i.models import CONDITIONINGS, FUSIONS
from t2i.training import GanClsObjective, train_step


class Timed:
    """Wraps a callable and adds its wall time (after a device sync) to ``total``."""

    def __init__(self, fn, sync):
        self.fn, self.sync, self.total = fn, sync, 0.0

    def __call__(self, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.sync()
        self.total += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--text_embed_dim", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--torch_compile", action="store_true")
    parser.add_argument("--num_images", type=int, default=4096, help="size of the random in-memory dataset")
    parser.add_argument("--fusion", default="input", choices=FUSIONS)
    parser.add_argument("--conditioning_augmentation", action="store_true")
    parser.add_argument("--text_batch_norm", action="store_true")
    parser.add_argument("--conditioning", default="concat", choices=CONDITIONINGS)
    parser.add_argument("--projection_scales", type=int, default=1)
    parser.add_argument("--polar_harmonics", type=int, default=0)
    parser.add_argument("--residual_blocks", action="store_true")
    parser.add_argument("--transposed_up_blocks", action="store_true")
    parser.add_argument("--deep_fusion", action="store_true", help="with --fusion input: a text affine after every BatchNorm of G")
    parser.add_argument("--fusion_masks", type=int, default=0, help="with --deep_fusion: K spatial masks per fused layer")
    parser.add_argument("--output_palette", type=int, default=0, help="with --fusion input: K output regions coloured from the text")
    parser.add_argument("--gan_int", action=argparse.BooleanOptionalAction, default=True, help="--no-gan_int: GAN-CLS only")
    parser.add_argument("--int_captions", type=int, default=2, help="> 2: GAN-INT on flat-Dirichlet mixtures of this many captions")
    parser.add_argument("--int_fraction", type=float, default=1.0, help="share of the batch that gets a GAN-INT mixture")
    parser.add_argument("--mode_seeking_mixtures", action="store_true")
    parser.add_argument("--mode_seeking_weight", type=float, default=0.0)
    parser.add_argument("--diff_augment", nargs="*", default=[], choices=DIFF_AUGMENT_POLICIES)
    parser.add_argument("--contrastive_weight", type=float, default=0.0, help="XMC-GAN's contrastive term (projection D)")
    parser.add_argument("--contrastive_hard_negatives", action="store_true", help="the wrong text joins the contrastive candidates")
    parser.add_argument("--counterfactual_fakes", type=float, default=0.0, help="share of the batch G also draws counterfactuals for")
    parser.add_argument("--out", default=None)
    bench = parser.parse_args()

    accelerator = Accelerator(mixed_precision=bench.mixed_precision, cpu=not torch.cuda.is_available())
    device = accelerator.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    objective = GanClsObjective(gan_int=bench.gan_int, mode_seeking_weight=bench.mode_seeking_weight, kl_weight=2.0 if bench.conditioning_augmentation else 0.0,
                                diff_augment=tuple(bench.diff_augment), int_captions=bench.int_captions, int_fraction=bench.int_fraction,
                                int_beta=None if bench.int_captions > 2 else 0.5, mode_seeking_mixtures=bench.mode_seeking_mixtures,
                                contrastive_weight=bench.contrastive_weight, contrastive_hard_negatives=bench.contrastive_hard_negatives,
                                counterfactual_fakes=bench.counterfactual_fakes)

    torch.manual_seed(0)
    load_size = bench.resolution * 76 // 64
    images = torch.randint(0, 256, (bench.num_images, 3, load_size, load_size), dtype=torch.uint8)
    embeddings = CaptionEmbeddings(torch.randn(bench.num_images * 10, bench.text_embed_dim), torch.arange(0, bench.num_images * 10 + 1, 10))
    labels = torch.arange(bench.num_images) % 82
    # Random "counterfactuals" and swapped flags: the step's cost does not depend on what the edits say.
    counterfactuals = CaptionEmbeddings(torch.randn_like(embeddings.embeddings), embeddings.offsets) if bench.counterfactual_fakes else None
    loader = TensorBatchLoader(images, embeddings, labels, bench.batch_size, bench.resolution, device=device,
                               counterfactual_texts=bench.counterfactual_fakes > 0, counterfactual_embeddings=counterfactuals,
                               swapped=torch.ones(len(embeddings.embeddings), dtype=torch.bool) if bench.counterfactual_fakes else None)

    generator = GanClsGenerator(text_embed_dim=bench.text_embed_dim, ngf=bench.ngf, resolution=bench.resolution, fusion=bench.fusion,
                                conditioning_augmentation=bench.conditioning_augmentation, text_batch_norm=bench.text_batch_norm,
                                polar_harmonics=bench.polar_harmonics,
                                residual_blocks=bench.residual_blocks, transposed_up_blocks=bench.transposed_up_blocks,
                                deep_fusion=bench.deep_fusion, fusion_masks=bench.fusion_masks,
                                output_palette=bench.output_palette)
    discriminator = GanClsDiscriminator(text_embed_dim=bench.text_embed_dim, ndf=bench.ndf, resolution=bench.resolution,
                                        text_batch_norm=bench.text_batch_norm, conditioning=bench.conditioning,
                                        projection_scales=bench.projection_scales)
    if bench.channels_last:
        generator, discriminator = generator.to(memory_format=torch.channels_last), discriminator.to(memory_format=torch.channels_last)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    generator, discriminator, optimizer_g, optimizer_d = accelerator.prepare(generator, discriminator, optimizer_g, optimizer_d)
    if bench.torch_compile:
        generator, discriminator = torch.compile(generator), torch.compile(discriminator)
    optimizer_g.step = Timed(optimizer_g.step, sync)
    optimizer_d.step = Timed(optimizer_d.step, sync)
    noise_rng = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield from loader

    stream = batches()
    next_batch = Timed(lambda: next(stream), sync)
    step = Timed(train_step, sync)
    for i in range(bench.warmup + bench.steps):
        if i == bench.warmup:  # discard compilation and allocator warm-up
            next_batch.total = step.total = optimizer_g.step.total = optimizer_d.step.total = 0.0
            started = time.perf_counter()
        batch = next_batch()
        step(accelerator, generator, discriminator, optimizer_g, optimizer_d, batch, objective, noise_rng)
    sync()
    total = time.perf_counter() - started
    optimizer_time = optimizer_g.step.total + optimizer_d.step.total
    outside = total - (step.total - optimizer_time)

    report = {
        "benchmark": "train_speed",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "batch_size": bench.batch_size,
        "resolution": bench.resolution,
        "ngf": bench.ngf,
        "ndf": bench.ndf,
        "mixed_precision": bench.mixed_precision,
        "channels_last": bench.channels_last,
        "torch_compile": bench.torch_compile,
        "fusion": bench.fusion,
        "conditioning_augmentation": bench.conditioning_augmentation,
        "conditioning": bench.conditioning,
        "projection_scales": bench.projection_scales,
        "polar_harmonics": bench.polar_harmonics,
        "residual_blocks": bench.residual_blocks,
        "deep_fusion": bench.deep_fusion,
        "fusion_masks": bench.fusion_masks,
        "output_palette": bench.output_palette,
        "transposed_up_blocks": bench.transposed_up_blocks,
        "gan_int": bench.gan_int,
        "int_captions": bench.int_captions,
        "int_fraction": bench.int_fraction,
        "mode_seeking_mixtures": bench.mode_seeking_mixtures,
        "diff_augment": bench.diff_augment,
        "steps": bench.steps,
        "images_per_second": bench.steps * bench.batch_size / total,
        "ms_per_step": 1000 * total / bench.steps,
        "data_ms_per_step": 1000 * next_batch.total / bench.steps,
        "optimizer_ms_per_step": 1000 * optimizer_time / bench.steps,
        "fraction_outside_forward_backward": outside / total,
    }
    for key, value in report.items():
        print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")
    if bench.out:
        os.makedirs(os.path.dirname(bench.out) or ".", exist_ok=True)
        Path(bench.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {bench.out}")


if __name__ == "__main__":
    main()
