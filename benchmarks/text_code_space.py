"""Two questions about the space a trained generator reads the caption in, asked at sampling time only.

1. **Where should GAN-INT interpolate?** Reed et al. (ICML 2016) interpolate the sentence embedding. With word-level
   attention (``text_attention_heads``) the embedding is the char-CNN-RNN's position states, and a mixture of two
   captions' states is a per-position mixture of different words, whose attention weights are not a mixture of the
   ends' weights. Compared: ``embedding`` (what `GanClsPipeline.interpolate` does: the embeddings mixed, then
   L2-normalised and pooled inside G), ``pooled`` (the ends' vectors after normalisation and attention pooling,
   mixed: for a mean-pooled model with ``normalize_text`` the mixture of the unit embeddings, shorter mid-strip) and
   ``code`` (the ends' text codes mixed, what G's layers read), on the interpolation check of
   `t2i.evaluation.robustness`. With text BatchNorm and no conditioning augmentation the projection is affine up to
   its LeakyReLU, so ``pooled`` and ``code`` differ only where the mixture crosses that kink.
2. **Does extrapolating the text code bind the attributes harder?** A GAN analogue of classifier-free guidance:
   c' = c̄ + s·(c − c̄), with c̄ the mean text code of the first caption of each of the first 2,000 training images;
   s = 1 (always scored) is the plain model. Scored on the full protocol (`t2i.evaluation.evaluate_pipeline`, the
   shipped oracle).

    python benchmarks/text_code_space.py --model pretrained --dataset data/synthetic-flowers \\
        --scale 0.85 1.0 1.15 1.4 --out benchmarks/results/text_code_space_v10.json

About 20 s per space and 30 s per scale at 1,000 captions on 2 CPU cores. Prints one JSON line per row, then tables.
"""

import argparse
import json
import math
from pathlib import Path

import torch
from diffusers import ImagePipelineOutput

from t2i import GanClsPipeline
from t2i.cli import run_main
from t2i.data import load_captioned_dataset
from t2i.evaluation import TABLE_COLUMNS, evaluate_pipeline, headline_metrics, load_oracle
from t2i.evaluation.robustness import interpolation_report, real_references
from t2i.pipeline import _check_generator, to_unit_range
from t2i.text_pretraining.joint_embedding import load_joint_image_encoder

SPACES = ("embedding", "pooled", "code")


class TextSpacePipeline(GanClsPipeline):
    """`GanClsPipeline` whose interpolation mixes ``space`` (one of ``SPACES``), and whose text codes are all
    extrapolated by ``scale`` from ``mean_code`` [text_proj_dim] (scale 1: the plain pipeline). Call ``setup()``
    once after loading."""

    space = "embedding"
    scale = 1.0
    mean_code: torch.Tensor | None = None

    def setup(self, captions: list[str]) -> None:
        """Take c̄ from ``captions``, and route every text code G computes through the extrapolation."""
        if self.mean_code is not None:
            raise RuntimeError("setup() already ran: its extrapolation would wrap itself")
        text_code = self.generator.text_code
        with torch.inference_mode():
            codes = [text_code(self._encode_checked(captions[i : i + 500]).to(self._execution_device))[0] for i in range(0, len(captions), 500)]
        self.mean_code = torch.cat(codes).mean(0)

        def extrapolated(text_embeds, code_noise=None):
            code, mean, log_variance = text_code(text_embeds, code_noise)
            return self._extrapolate(code), mean, log_variance

        self.generator.text_code = extrapolated  # an instance attribute: forward() calls it

    def _extrapolate(self, code: torch.Tensor) -> torch.Tensor:
        return code if self.scale == 1.0 else self.mean_code + self.scale * (code - self.mean_code)

    @torch.inference_mode()
    def interpolate(self, prompt_a, prompt_b, num_steps=8, generator=None, output_type="pil", return_dict=True):
        if self.space == "embedding":
            return super().interpolate(prompt_a, prompt_b, num_steps, generator, output_type, return_dict)
        if output_type != "pt" or not return_dict:
            raise ValueError("this benchmark's pooled and code interpolation return output_type='pt' only")
        _check_generator(generator, 1, "interpolate's one noise vector")
        self._check_prompts([prompt_a, prompt_b], ["prompt_a", "prompt_b"])
        G, device = self.generator, self._execution_device
        steps = self._interpolation_steps(num_steps, device)
        ends = self._encode_checked([prompt_a, prompt_b]).to(device)
        if self.space == "code":
            codes = torch.lerp(*G.text_code(ends)[0].split(1), steps)
        else:  # the pooled vectors' mixture, then the rest of G.text_code (its projection, or CA's mean)
            embeds = torch.nn.functional.normalize(ends, dim=1) if G.config.normalize_text else ends
            pooled = torch.lerp(*(G.text_attention(embeds) if G.text_attention is not None else embeds).split(1), steps)
            codes = G.ca_net(pooled)[0] if G.config.conditioning_augmentation else G.text_projection(pooled)
            codes = self._extrapolate(codes)
        noise = self.prepare_latents(1, generator, device).expand(num_steps, -1)
        return ImagePipelineOutput(images=to_unit_range(G.generate_from_code(noise, codes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder or Hub model id")
    parser.add_argument("--dataset", required=True, help="the synthetic captioned-flowers folder")
    parser.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES), help="interpolation spaces (default: all)")
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0, 1.15, 1.4],
                        help="text-code scales s, each finite and > 0 (default: 1.0 1.15 1.4)")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=1000,
                        help="test captions of the full protocol, one image each (default: 1000)")
    parser.add_argument("--out", default=None, help="JSON with every row (written before the tables are printed)")
    args = parser.parse_args()
    if not all(math.isfinite(s) and s > 0 for s in args.scale):
        parser.error(f"--scale values must be finite and > 0, got {args.scale}")
    args.scale = sorted({1.0, *args.scale})  # the plain model is every comparison's baseline
    if args.num_samples < 2:
        parser.error(f"--num-samples must be at least 2, got {args.num_samples}")
    test, train = load_captioned_dataset(args.dataset, "test"), load_captioned_dataset(args.dataset, "train")
    oracle = load_oracle()[0]
    pipeline = TextSpacePipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.setup([c[0] if isinstance(c, list) else c for c in train["captions"][:2000]])
    real_features = real_references(oracle, pipeline.generator.config.resolution)[1]
    strips = []
    for space in args.spaces:
        pipeline.space = space
        report = interpolation_report(pipeline, oracle=oracle, real_features=real_features)
        failing = [f"{r['prompt_a']} -> {r['prompt_b']} (seed {r['seed']})" for r in report["strips"] if not r["passes"]]
        strips.append({"space": space, "passed": report["passed"], "total": report["total"], "failing": failing})
        print(json.dumps(strips[-1]), flush=True)
    pipeline.space = "embedding"
    joint_image_encoder = load_joint_image_encoder(args.model)
    scales = []
    for scale in args.scale:
        pipeline.scale = scale
        metrics = headline_metrics(evaluate_pipeline(pipeline, test, train, oracle, num_samples=args.num_samples,
                                                     joint_image_encoder=joint_image_encoder))
        scales.append({"scale": scale, **metrics})
        print(json.dumps(scales[-1]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": str(args.model), "num_samples": args.num_samples,
                                              "interpolation": strips, "extrapolation": scales}, indent=2))
    print("| interpolated | strips |\n|---|---|")
    for row in strips:
        print(f"| {row['space']} | {row['passed']} / {row['total']} |")
    print("\n| s | " + " | ".join(label for label, _ in TABLE_COLUMNS) + " |\n" + "|---" * (len(TABLE_COLUMNS) + 1) + "|")
    for row in scales:
        print(f"| {row['scale']} | " + " | ".join(f"{row[key]:.3f}" if key in row else "–" for _, key in TABLE_COLUMNS) + " |")


if __name__ == "__main__":
    run_main(main)
