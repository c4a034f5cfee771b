"""t2i.text_pretraining.distillation: a char-CNN-RNN student learns to reproduce a teacher's caption embeddings."""

import pytest
import torch
from conftest import TINY_TEXT_ENCODER_CONFIG

from t2i.data import encode_captions, load_captioned_dataset
from t2i.text_pretraining.distillation import distill_text_encoder, distillation_agreement
from t2i.text_encoders import build_char_cnn_rnn

STUDENT_CONFIG = dict(conv_channels=[32, 32, 32], rnn_type="gru", rnn_hidden_size=32, embed_dim=24)


@pytest.fixture(scope="module")
def captions(tiny_synthetic_dataset):
    return (load_captioned_dataset(tiny_synthetic_dataset, "train")["captions"],
            load_captioned_dataset(tiny_synthetic_dataset, "test")["captions"])


@pytest.fixture(scope="module")
def teacher():
    # Any frozen text encoder can teach; a seeded random char-CNN-RNN is a fixed, nontrivial function of the text.
    torch.manual_seed(1)
    return build_char_cnn_rnn(**{**TINY_TEXT_ENCODER_CONFIG, "embed_dim": 24})


def test_student_learns_the_teacher_on_held_out_captions(captions, teacher):
    train, test = captions
    targets, test_targets = encode_captions(train, teacher), encode_captions(test, teacher)
    torch.manual_seed(0)
    student = build_char_cnn_rnn(**STUDENT_CONFIG)
    before = distillation_agreement(student, test, test_targets)
    result = distill_text_encoder(train, targets, student, steps=150, batch_size=64, learning_rate=3e-3, seed=0,
                                  test_captions=test, test_teacher_embeddings=test_targets)

    assert result.metrics["train_loss"] < 0.3 * result.metrics["train_loss_initial"], result.metrics
    # Captions of classes the student never saw: it reads them much as the teacher does, far better than before.
    assert result.metrics["test_cosine"] > 0.8 and result.metrics["test_cosine"] > before + 0.3, (before, result.metrics)
    assert result.metrics["test_cosine"] == pytest.approx(distillation_agreement(result.text_encoder, test, test_targets))
    # The input student is untouched, and the trained one comes back frozen.
    assert distillation_agreement(student, test, test_targets) == pytest.approx(before)
    assert not result.text_encoder.model.training
    assert not any(p.requires_grad for p in result.text_encoder.model.parameters())
    assert len(result.loss_history) == 150


def test_same_seed_gives_the_same_student(captions, teacher):
    train, _ = captions
    targets = encode_captions(train, teacher)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(distill_text_encoder(train, targets, build_char_cnn_rnn(**STUDENT_CONFIG), steps=5, batch_size=16, seed=4))
    first, second = (r.text_encoder.model.state_dict() for r in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_mismatched_inputs_are_refused(captions, teacher):
    train, test = captions
    targets = encode_captions(train, teacher)
    with pytest.raises(ValueError, match="24-d"):
        distill_text_encoder(train, targets, build_char_cnn_rnn(**{**STUDENT_CONFIG, "embed_dim": 16}), steps=1)
    with pytest.raises(ValueError, match="do not belong to these captions"):
        distill_text_encoder(test, targets, build_char_cnn_rnn(**STUDENT_CONFIG), steps=1)
    with pytest.raises(ValueError, match="both test_captions"):
        distill_text_encoder(train, targets, build_char_cnn_rnn(**STUDENT_CONFIG), steps=1, test_captions=test)
