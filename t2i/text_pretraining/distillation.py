"""Distilling a sentence encoder into a char-CNN-RNN small enough to ship with the generator.

Reed's DS-SJE (`t2i.text_pretraining.joint_embedding`) teaches the char-CNN-RNN to tell the training *classes* apart. On attribute
combinations it never saw, that embedding mostly keeps the most distinctive attribute (measured on the synthetic
flowers: a linear probe reads petal colour off the test-class captions 97 % of the time, but centre colour only
67 % and the petal-count word 56 %). all-MiniLM-L6-v2, pretrained on a billion sentence pairs, encodes each
phrase (94 %, 97 %), but at 90 MB it is four times the budget of the embedded default model.

Distillation keeps both: the char-CNN-RNN is trained to reproduce the teacher's embedding of every training
caption (mean squared error in the teacher's space), so it learns to read captions the way the teacher does and is
a drop-in replacement for it, at a fraction of the size. Only training captions are used, as with DS-SJE.

    teacher = TextEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    targets = load_or_build_caption_embeddings(train_dataset, teacher, cache_dir)
    result = distill_text_encoder(train_dataset["captions"], targets, build_char_cnn_rnn(embed_dim=targets.dim))
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..data import CaptionEmbeddings, encode_captions
from .joint_embedding import LossLog, tokenize_captions
from ..text_encoders import CharCnnRnnEncoder, TextEncoder

logger = logging.getLogger(__name__)

__all__ = ["DistillationResult", "distill_text_encoder", "distillation_agreement"]


@dataclass
class DistillationResult:
    """What `distill_text_encoder` returns.

    Attributes:
        text_encoder: the trained student, frozen and in eval mode.
        metrics: `steps`, `train_seconds`, `train_loss` / `train_loss_initial` (mean over the last / first
            `log_every` steps), and with test captions `test_cosine`: the mean cosine similarity between student
            and teacher embeddings of captions the student never saw.
        loss_history: the loss of every step.
    """

    text_encoder: TextEncoder
    metrics: dict[str, float] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)


@torch.no_grad()
def distillation_agreement(student: TextEncoder, captions: Sequence[Sequence[str]], teacher_embeddings: CaptionEmbeddings) -> float:
    """Mean cosine similarity between the student's and the teacher's embedding of each caption."""
    student_embeddings = encode_captions(captions, student).embeddings
    return torch.nn.functional.cosine_similarity(student_embeddings, teacher_embeddings.embeddings).mean().item()


def distill_text_encoder(
    captions: Sequence[Sequence[str]],
    teacher_embeddings: CaptionEmbeddings,
    student: TextEncoder,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    log_every: int = 100,
    progress: bool = False,
    test_captions: Sequence[Sequence[str]] | None = None,
    test_teacher_embeddings: CaptionEmbeddings | None = None,
) -> DistillationResult:
    """Train a char-CNN-RNN `student` to reproduce `teacher_embeddings` of `captions`.

    Each step takes `batch_size` random captions and an Adam step on ‖student(t) − teacher(t)‖², summed over
    the embedding and averaged over the batch; the learning rate warms up over the first 5 % of the steps, then
    decays to zero along a cosine. All randomness comes from `seed`.

    Args:
        captions: the captions of each training image.
        teacher_embeddings: the teacher's embedding of every caption, in the same order (as
            `load_or_build_caption_embeddings` returns them).
        student: a `TextEncoder` wrapping a `CharCnnRnnEncoder` whose `embed_dim` is the teacher's; it is copied,
            not modified.
        steps, batch_size, learning_rate, seed: the optimisation.
        device: where to train (default: the student's device).
        log_every: steps per logged (and `train_loss`-averaged) window.
        progress: show a tqdm progress bar.
        test_captions, test_teacher_embeddings: held-out captions and their teacher embeddings, for `test_cosine`.

    Returns:
        A `DistillationResult` with the frozen student and the metrics.
    """
    if not isinstance(student.model, CharCnnRnnEncoder):
        raise TypeError(f"distillation trains a char-CNN-RNN student, got {type(student.model).__name__}")
    if student.embedding_dim != teacher_embeddings.dim:
        raise ValueError(f"the student gives {student.embedding_dim}-d embeddings, the teacher {teacher_embeddings.dim}-d")
    caption_ids, caption_offsets = tokenize_captions(student, captions)
    if len(caption_ids) != len(teacher_embeddings.embeddings) or not torch.equal(caption_offsets, teacher_embeddings.offsets):
        raise ValueError("teacher_embeddings do not belong to these captions (different counts per image)")
    if steps < 1 or batch_size < 1 or log_every < 1:
        raise ValueError(f"steps ({steps}), batch_size ({batch_size}) and log_every ({log_every}) must be ≥ 1")
    if (test_captions is None) != (test_teacher_embeddings is None):
        raise ValueError("give both test_captions and test_teacher_embeddings, or neither")
    device = torch.device(device) if device is not None else student.model.device

    model = copy.deepcopy(student.model).to(device).train().requires_grad_(True)
    caption_ids, targets = caption_ids.to(device), teacher_embeddings.embeddings.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, foreach=True)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    generator = torch.Generator().manual_seed(seed)

    log = LossLog("text encoder distillation", steps, log_every, progress)
    for _ in log:
        rows = torch.randint(len(caption_ids), (batch_size,), generator=generator).to(device)
        predicted = model(caption_ids[rows].long()).text_embeds
        loss = (predicted - targets[rows]).square().sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        log.add(loss)
    metrics, history = log.summary()
    trained = TextEncoder(student.tokenizer, model)  # TextEncoder freezes it (eval, no grad)
    if test_captions is not None:
        metrics["test_cosine"] = distillation_agreement(trained, test_captions, test_teacher_embeddings)
        logger.info("distilled text encoder: cosine to the teacher on held-out captions %.4f", metrics["test_cosine"])
    return DistillationResult(trained, metrics, history)
