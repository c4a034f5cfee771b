"""Pre-training Reed's char-CNN-RNN with the deep symmetric structured joint embedding (DS-SJE).

Reed et al., CVPR 2016, "Learning Deep Representations of Fine-Grained Visual Descriptions": a text encoder φ
and an image encoder θ are trained together so that the compatibility F(v, t) = θ(v)·φ(t) of an image and a
caption is highest for captions of the image's own class, and vice versa. The trained φ then serves, frozen, as
the text encoder of the GAN. No pretrained vision weights are reachable here, so θ is a small CNN
(`JointImageEncoder`) trained from scratch alongside φ instead of Reed's fixed GoogLeNet features.

    result = train_joint_embedding(train_images, train_captions, train_labels, build_char_cnn_rnn(),
                                   test_images=..., test_captions=..., test_labels=...)
    result.text_encoder.save_pretrained(output_dir)   # frozen, reloads with TextEncoder.from_pretrained
    result.metrics["zero_shot_top1"]                  # held-out text->class accuracy on the test classes

Images come as the data fast path's uint8 tensors [N, 3, L, L] (`t2i.data.images_to_uint8`, L =
`load_size_for(resolution)`), augmented with `t2i.data.augment_batch`.
"""

from __future__ import annotations

import copy
import logging
import time
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from tqdm.auto import tqdm

from ..data import augment_batch, encode_captions
from ..hub import SafetensorsOnlyMixin, check_before_loading, resolve_pretrained_folder
from ..models import standing_batch_norm_
from ..text_encoders import CharCnnRnnEncoder, TextEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "JOINT_IMAGE_ENCODER_FOLDER", "JointEmbeddingResult", "JointImageEncoder", "LossLog", "load_joint_image_encoder", "recalibrate_batch_norm",
    "strided_conv_stack", "symmetric_joint_embedding_loss", "tokenize_captions", "train_joint_embedding", "zero_shot_accuracy",
]


def symmetric_joint_embedding_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    violations: Literal["sum", "max"] = "sum",
) -> torch.Tensor:
    """Reed et al.'s symmetric structured hinge loss for a minibatch of matching (image, caption) pairs.

    Sample n is the pair (v_n, t_n) of class y_n; compatibility is F(v, t) = v·t. For every other class y in the
    batch, the margin violations of the image→text and text→image directions are, with Δ = `margin`,

        image→text: a_v(n, y) = max(0, Δ + E_{t∈T(y)}[F(v_n, t)] − F(v_n, t_n))
        text→image: a_t(n, y) = max(0, Δ + E_{v∈V(y)}[F(v, t_n)] − F(v_n, t_n))

    ℓ_v(n) combines a_v(n, ·) over the classes y ≠ y_n: their largest (`violations="max"`, the equation of the
    paper) or their sum (`"sum"`, what Reed's released Torch code computes). The loss is
    (mean_n ℓ_v(n) + mean_n ℓ_t(n)) / 2. `"sum"` is the default because it is the one that trains from scratch:
    an untrained char-CNN-RNN gives nearly the same embedding to every caption, and with `"max"` both encoders
    then settle at the degenerate loss Δ (every F equal) instead of learning.

    Repeated labels: the expectation over a class's captions (images) is the mean over that class's members *in
    this batch* (F is linear, so it is F against the class-mean embedding). A class that appears several times is
    thus one competitor, and a sample never competes with samples of its own class. With one pair per class
    (Reed's batches, and `train_joint_embedding`'s when batch_size ≤ number of classes) every pair simply
    competes with every other pair of the batch.

    Args:
        image_embeds: θ(v), float [B, D].
        text_embeds: φ(t), float [B, D]; row n is a caption of image n.
        labels: class of each pair, int [B]; at least two distinct classes.
        margin: Δ, the required gap between the right class and any other.
        violations: how the violations of the other classes combine, `"sum"` or `"max"`.

    Returns:
        The scalar loss.
    """
    if violations not in ("sum", "max"):
        raise ValueError(f"violations must be 'sum' or 'max', got {violations!r}")
    classes, inverse = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("the joint-embedding loss needs at least two classes in the batch")
    one_hot = F.one_hot(inverse, len(classes)).to(image_embeds.dtype)  # [B, C]
    class_sizes = one_hot.sum(0)[:, None]
    text_class_means = one_hot.T @ text_embeds / class_sizes  # [C, D]
    image_class_means = one_hot.T @ image_embeds / class_sizes
    matching = (image_embeds * text_embeds).sum(dim=1, keepdim=True)  # F(v_n, t_n), [B, 1]
    own_class = one_hot.bool()

    def hinge(scores: torch.Tensor) -> torch.Tensor:  # scores[n, y]: compatibility of sample n with class y
        hinged = (margin + scores - matching).clamp(min=0).masked_fill(own_class, 0.0)
        return (hinged.sum(dim=1) if violations == "sum" else hinged.amax(dim=1)).mean()

    return 0.5 * (hinge(image_embeds @ text_class_means.T) + hinge(text_embeds @ image_class_means.T))


def strided_conv_stack(channels: Sequence[int], in_channels: int = 3, extra_convs: int = 0) -> nn.Sequential:
    """Stride-2 4×4 convolutions, each halving the side: BatchNorm after all but the first (as in DCGAN's
    discriminator, no normalisation on the raw pixels), LeakyReLU(0.2). ``extra_convs`` 3×3 stride-1 convolutions
    (BatchNorm, LeakyReLU) follow each of them, for depth at the same resolution."""
    layers: list[nn.Module] = []
    for i, out_channels in enumerate(channels):
        layers.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=i == 0))
        if i > 0:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        for _ in range(extra_convs):
            layers += [nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.LeakyReLU(0.2, inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


class LossLog:
    """The losses of a training loop: iterate over it for the steps, `add` each step's loss. Shows a progress bar
    and logs the mean loss of every `log_every` steps (one device sync per window, not per step)."""

    def __init__(self, name: str, steps: int, log_every: int, progress: bool = False):
        self.name, self.steps, self.log_every = name, steps, log_every
        self.losses: list[torch.Tensor] = []
        self.started = time.perf_counter()
        self.bar = tqdm(range(steps), desc=name, disable=not progress)

    def __iter__(self) -> Iterator[int]:
        return iter(self.bar)

    def add(self, loss: torch.Tensor) -> None:
        """Record one step's loss."""
        self.losses.append(loss.detach())
        step = len(self.losses)
        if step % self.log_every == 0 or step == self.steps:
            window = torch.stack(self.losses[-self.log_every :]).mean().item()
            self.bar.set_postfix(loss=f"{window:.4f}")
            logger.info("%s step %d/%d: loss %.4f", self.name, step, self.steps, window)

    def summary(self) -> tuple[dict[str, float], list[float]]:
        """`steps`, `train_seconds`, `train_loss_initial` and `train_loss` (means of the first and last windows), and
        every step's loss."""
        history = torch.stack(self.losses).cpu().tolist()
        first, last = history[: self.log_every], history[-self.log_every :]
        metrics = {"steps": float(len(history)), "train_seconds": time.perf_counter() - self.started,
                   "train_loss_initial": sum(first) / len(first), "train_loss": sum(last) / len(last)}
        return metrics, history


JOINT_IMAGE_ENCODER_FOLDER = "joint_image_encoder"
"""Where a trained θ is saved next to its text encoder and its pipeline (read by `t2i.evaluation`)."""


class JointImageEncoder(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    """θ: a small DCGAN-discriminator-like CNN, image [B, 3, R, R] in [-1, 1] → embedding [B, embed_dim].

    Stride-2 4×4 convolutions (BatchNorm after all but the first, LeakyReLU), global average pooling (so any
    resolution works), then a linear map into the text embedding space.
    """

    @register_to_config
    def __init__(self, embed_dim: int = 1024, channels: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.features = strided_conv_stack(channels)
        self.projection = nn.Linear(channels[-1], embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed images [B, 3, R, R] in [-1, 1] into [B, embed_dim]."""
        return self.projection(self.features(pixel_values).mean(dim=(2, 3)))


@dataclass
class JointEmbeddingResult:
    """What `train_joint_embedding` returns.

    Attributes:
        text_encoder: the trained φ, frozen and in eval mode; `save_pretrained` writes a loadable folder.
        image_encoder: the trained θ, in eval mode (useful only to evaluate the embedding).
        metrics: `steps`, `train_seconds`, `train_loss` (mean over the last `log_every` steps),
            `train_loss_initial` (mean over the first `log_every`), and with test data the `zero_shot_*`
            numbers of `zero_shot_accuracy` (`zero_shot_top1`, `zero_shot_ap50`, `zero_shot_chance`).
        loss_history: the loss of every step.
    """

    text_encoder: TextEncoder
    image_encoder: JointImageEncoder
    metrics: dict[str, float] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)


def _check_inputs(images: torch.Tensor, captions: Sequence[Sequence[str]], labels: torch.Tensor, resolution: int) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [N, 3, L, L] (t2i.data.images_to_uint8), got {images.dtype} {tuple(images.shape)}")
    if min(images.shape[2:]) < resolution:
        raise ValueError(f"images are {tuple(images.shape[2:])} px, smaller than resolution {resolution}")
    if not len(images) == len(captions) == len(labels):
        raise ValueError(f"{len(images)} images, {len(captions)} caption lists and {len(labels)} labels")
    if any(len(c) == 0 for c in captions):
        raise ValueError("every image needs at least one caption")


def tokenize_captions(text_encoder: TextEncoder, captions: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All captions as character ids [total_captions, longest], zero-padded, and the offsets (int64 [N + 1]) of
    each image's rows. Each distinct caption is tokenized once."""
    flat = [caption for image_captions in captions for caption in image_captions]
    unique = list(dict.fromkeys(flat))
    config = text_encoder.model.config
    # Padding here rather than in the tokenizer is ~3x faster; the encoder pads every batch to max_chars anyway.
    ids = text_encoder.tokenizer(unique, truncation=True, max_length=config.max_chars)["input_ids"]
    dtype = torch.uint8 if config.alphabet_size < 256 else torch.long  # Reed's 70 characters: 8x less memory
    padded = nn.utils.rnn.pad_sequence([torch.tensor(row, dtype=dtype) for row in ids], batch_first=True)
    position = {text: i for i, text in enumerate(unique)}
    rows = padded[torch.tensor([position[text] for text in flat], dtype=torch.long)]
    offsets = torch.tensor([0, *(len(c) for c in captions)], dtype=torch.long).cumsum(0)
    return rows, offsets


class _ReedBatchSampler:
    """Reed's minibatch: distinct random classes, one random image of each, one random caption of each image.

    With more slots than classes, every class fills ⌊B/C⌋ or ⌈B/C⌉ of them.
    """

    def __init__(self, labels: torch.Tensor, caption_offsets: torch.Tensor):
        self.by_class = labels.argsort(stable=True)  # image indices grouped by class
        self.class_sizes = torch.bincount(labels)
        self.class_starts = self.class_sizes.cumsum(0) - self.class_sizes
        self.classes = torch.nonzero(self.class_sizes).flatten()  # label values may skip some classes
        self.caption_offsets = caption_offsets

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Image indices and caption rows of one batch, int64 [batch_size] each, on the CPU."""
        rounds = -(-batch_size // len(self.classes))
        order = torch.cat([torch.randperm(len(self.classes), generator=generator) for _ in range(rounds)])
        classes = self.classes[order[:batch_size]]
        pick = (torch.rand(batch_size, generator=generator) * self.class_sizes[classes]).long()
        images = self.by_class[self.class_starts[classes] + pick]
        first, counts = self.caption_offsets[images], self.caption_offsets[images + 1] - self.caption_offsets[images]
        return images, first + (torch.rand(batch_size, generator=generator) * counts).long()


def recalibrate_batch_norm(
    image_encoder: nn.Module, images: torch.Tensor, resolution: int, generator: torch.Generator, batches: int = 8
) -> None:
    """Replace θ's BatchNorm running statistics by exact averages over a few augmented batches of the final weights.

    The running averages lag the weights by ~10 steps, which (measured) can cost a third of the zero-shot accuracy
    right after fast training; this is "precise BN" (Wu & Johnson, 2021).
    """
    batch_size = min(len(images), 256)

    def augmented_batches():
        for _ in range(batches):
            index = torch.randint(len(images), (batch_size,), generator=generator)
            yield (augment_batch(images[index.to(images.device)], resolution, train=True, generator=generator),)

    standing_batch_norm_(image_encoder, augmented_batches())


@torch.no_grad()
def _embed_images(image_encoder: JointImageEncoder, images: torch.Tensor, resolution: int, batch_size: int) -> torch.Tensor:
    device = next(image_encoder.parameters()).device
    chunks = [
        image_encoder(augment_batch(images[i : i + batch_size].to(device), resolution, train=False))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).float()


def zero_shot_accuracy(
    text_encoder: TextEncoder,
    image_encoder: JointImageEncoder,
    images: torch.Tensor,
    captions: Sequence[Sequence[str]],
    labels: torch.Tensor | Sequence[int],
    resolution: int = 64,
    batch_size: int = 256,
) -> dict[str, float]:
    """Reed's zero-shot evaluation of a joint embedding on the classes present in `labels`.

    Each class's text embedding is the mean of the embeddings of all its captions. Classification: each image
    (centre crop) gets the class whose text embedding is most compatible; `top1` is the fraction of images
    classified right. Retrieval: each class's text embedding ranks all images; `ap50` is the mean over classes of
    the average precision of the top 50 (normalised by min(50, class size), so a perfect ranking scores 1).
    `chance` is 1 / number of classes, the expected `top1` of a random embedding.

    Args:
        text_encoder: φ (any `TextEncoder`; it is used frozen).
        image_encoder: θ, set to eval mode for the evaluation and restored afterwards.
        images: uint8 [N, 3, L, L], L ≥ resolution.
        captions: the captions of each image.
        labels: class of each image, int [N].
        resolution: side of the centre crop fed to θ.
        batch_size: images / captions per forward pass.

    Returns:
        `{"top1", "ap50", "chance", "num_classes"}` as floats.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    _check_inputs(images, captions, labels, resolution)
    classes, image_class = torch.unique(labels, return_inverse=True)
    caption_embeds = encode_captions(captions, text_encoder, batch_size=batch_size)
    caption_class = image_class.repeat_interleave(caption_embeds.counts)
    class_text = torch.zeros(len(classes), caption_embeds.dim).index_add_(0, caption_class, caption_embeds.embeddings)
    class_text /= torch.bincount(caption_class, minlength=len(classes))[:, None]

    was_training = image_encoder.training
    image_encoder.eval()
    image_embeds = _embed_images(image_encoder, images, resolution, batch_size).cpu()
    image_encoder.train(was_training)

    scores = image_embeds @ class_text.T  # [N, C]
    top1 = (scores.argmax(dim=1) == image_class).float().mean().item()

    k = min(50, len(images))
    ranked = scores.T.argsort(dim=1, descending=True, stable=True)[:, :k]  # [C, k] image indices, best first
    relevant = (image_class[ranked] == torch.arange(len(classes))[:, None]).float()
    precision_at = relevant.cumsum(dim=1) / torch.arange(1, k + 1)
    class_sizes = torch.bincount(image_class, minlength=len(classes)).clamp(max=k)
    ap50 = ((precision_at * relevant).sum(dim=1) / class_sizes).mean().item()
    return {"top1": top1, "ap50": ap50, "chance": 1.0 / len(classes), "num_classes": float(len(classes))}


def train_joint_embedding(
    images: torch.Tensor,
    captions: Sequence[Sequence[str]],
    labels: torch.Tensor | Sequence[int],
    text_encoder: TextEncoder,
    *,
    resolution: int = 64,
    steps: int = 2000,
    batch_size: int = 40,
    learning_rate: float = 3e-3,
    margin: float = 1.0,
    violations: Literal["sum", "max"] = "sum",
    image_channels: Sequence[int] = (64, 128, 256, 512),
    train_text_encoder: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    log_every: int = 100,
    progress: bool = False,
    test_images: torch.Tensor | None = None,
    test_captions: Sequence[Sequence[str]] | None = None,
    test_labels: torch.Tensor | Sequence[int] | None = None,
) -> JointEmbeddingResult:
    """Train a char-CNN-RNN φ and a `JointImageEncoder` θ with `symmetric_joint_embedding_loss` (DS-SJE).

    Every step draws Reed's minibatch (`batch_size` distinct classes, one random image and one random caption of
    each), augments the images with `augment_batch` (random crop + flip), and takes an Adam step on both encoders (on θ
    alone with `train_text_encoder=False`).
    At the end θ's BatchNorm statistics are recomputed for its final weights, so the evaluation sees θ as trained.
    All randomness comes from `seed`, so on the CPU two runs with the same arguments give identical weights.
    Captions are tokenized once, up front; the loop never calls the tokenizer.

    Args:
        images: training images, uint8 [N, 3, L, L] (`images_to_uint8(dataset, load_size_for(resolution))`).
        captions: the captions of each image.
        labels: class of each image, int [N]; at least two classes.
        text_encoder: a `TextEncoder` wrapping a `CharCnnRnnEncoder` (e.g. `build_char_cnn_rnn()`); it is
            copied, not modified.
        resolution: side of the random crops fed to θ.
        steps: optimisation steps.
        batch_size: pairs per step (Reed: 40).
        learning_rate: Adam learning rate, for both encoders (3e-3 beat 1e-3 and 1e-2 on the synthetic flowers).
        margin: Δ of the hinge loss.
        violations: `"sum"` (Reed's code) or `"max"` (the paper's equation); see `symmetric_joint_embedding_loss`.
        image_channels: widths of θ's stride-2 convolutions.
        train_text_encoder: train φ and θ together (Reed); False keeps φ as it is (e.g. a distilled encoder) and
            fits only θ to it, which is what R-precision and the zero-shot numbers then measure.
        seed: seeds θ's initialisation and all sampling and augmentation.
        device: where to train (default: the text encoder's device).
        log_every: steps per logged (and `train_loss`-averaged) window.
        progress: show a tqdm progress bar with the running loss.
        test_images, test_captions, test_labels: held-out (zero-shot) data; when given, `zero_shot_accuracy`
            on it is added to the metrics as `zero_shot_top1`, `zero_shot_ap50` and `zero_shot_chance`.

    Returns:
        A `JointEmbeddingResult` with the frozen trained text encoder, the image encoder and the metrics.
    """
    if not isinstance(text_encoder.model, CharCnnRnnEncoder):
        raise TypeError(f"joint-embedding training needs a char-CNN-RNN text encoder, got {type(text_encoder.model).__name__}")
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    _check_inputs(images, captions, labels, resolution)
    if labels.unique().numel() < 2:
        raise ValueError("joint-embedding training needs images of at least two classes")
    if steps < 1 or batch_size < 2 or log_every < 1:
        raise ValueError(f"steps ({steps}), log_every ({log_every}) must be ≥ 1 and batch_size ({batch_size}) ≥ 2")
    if (test_images is None) != (test_captions is None) or (test_images is None) != (test_labels is None):
        raise ValueError("give all of test_images, test_captions and test_labels, or none")
    device = torch.device(device) if device is not None else text_encoder.model.device

    caption_ids, caption_offsets = tokenize_captions(text_encoder, captions)
    caption_ids, images = caption_ids.to(device), images.to(device)
    text_model = copy.deepcopy(text_encoder.model).to(device).train(train_text_encoder).requires_grad_(train_text_encoder)
    with torch.random.fork_rng(devices=[]):  # seed θ's initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        image_encoder = JointImageEncoder(text_model.config.embed_dim, tuple(image_channels)).to(device).train()
    parameters = [*(text_model.parameters() if train_text_encoder else []), *image_encoder.parameters()]
    if not train_text_encoder:  # a frozen φ embeds every caption once, instead of once per step
        with torch.no_grad():
            caption_embeds = torch.cat([text_model(caption_ids[i : i + 1024].long()).text_embeds for i in range(0, len(caption_ids), 1024)])
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, foreach=True)  # foreach: fewer, larger kernels on CPU too
    generator = torch.Generator().manual_seed(seed)  # a CPU generator: the same draws on every device
    sample_batch = _ReedBatchSampler(labels, caption_offsets)

    log = LossLog("joint embedding", steps, log_every, progress)
    for _ in log:
        image_index, caption_rows = sample_batch(batch_size, generator)
        pixels = augment_batch(images[image_index.to(device)], resolution, train=True, generator=generator)
        rows = caption_rows.to(device)
        text_embeds = text_model(caption_ids[rows].long()).text_embeds if train_text_encoder else caption_embeds[rows]
        loss = symmetric_joint_embedding_loss(image_encoder(pixels), text_embeds, labels[image_index].to(device), margin, violations)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.add(loss)
    metrics, history = log.summary()

    trained = TextEncoder(text_encoder.tokenizer, text_model)  # TextEncoder freezes it (eval, no grad)
    recalibrate_batch_norm(image_encoder, images, resolution, generator)
    image_encoder.eval().requires_grad_(False)
    if test_images is not None:
        evaluation = zero_shot_accuracy(trained, image_encoder, test_images, test_captions, test_labels, resolution)
        metrics.update({f"zero_shot_{k}": evaluation[k] for k in ("top1", "ap50", "chance")})
        logger.info("joint embedding zero-shot top-1 %.4f (chance %.4f), AP@50 %.4f", metrics["zero_shot_top1"],
                    metrics["zero_shot_chance"], metrics["zero_shot_ap50"])
    return JointEmbeddingResult(trained, image_encoder, metrics, history)


def load_joint_image_encoder(model: str | os.PathLike) -> JointImageEncoder | None:
    """θ saved next to a pipeline (folder `joint_image_encoder/`, written by train_accelerate.py), or None."""
    try:
        folder = resolve_pretrained_folder(model, subfolder=JOINT_IMAGE_ENCODER_FOLDER) / JOINT_IMAGE_ENCODER_FOLDER
    except FileNotFoundError:
        return None
    if not (folder / "config.json").is_file():
        return None
    check_before_loading(JointImageEncoder, folder)
    return JointImageEncoder.from_pretrained(folder).eval().requires_grad_(False)
