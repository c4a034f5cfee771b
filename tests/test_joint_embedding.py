"""DS-SJE text-encoder pre-training: the loss on hand-checkable tensors, a tiny training run, save/load."""

import pytest
import torch
from datasets import Dataset

from t2i import TextEncoder
from t2i.data import captioned_features, images_to_uint8, load_size_for
from t2i.datasets import CLASS_NAMES, SPECIES
from t2i.datasets.synthetic import make_example
from t2i.text_pretraining.joint_embedding import JointImageEncoder, symmetric_joint_embedding_loss, train_joint_embedding, zero_shot_accuracy
from t2i.text_encoders import build_char_cnn_rnn

TINY_TEXT = dict(conv_channels=[32, 32, 32], rnn_hidden_size=32, embed_dim=64)
TINY_IMAGE = (16, 32, 64, 128)
# Six synthetic species whose petal colours all differ (white, red, lavender, yellow, blue, orange), so a tiny
# model can tell them apart from a few hundred captions; chance is 1/6.
CLASSES = (4, 6, 13, 15, 30, 31)


def test_loss_is_zero_when_every_margin_holds():
    # One pair per class, orthogonal embeddings: F(v_n, t_n) = 2, every other F = 0, so a margin of 1 holds.
    embeds = torch.eye(3) * 2**0.5
    for violations in ("sum", "max"):
        assert symmetric_joint_embedding_loss(embeds, embeds, torch.tensor([0, 1, 2]), violations=violations) == 0


def test_loss_value_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([5, 7, 9])
    # F[n, m] = image_n · text_m = [[1, 1, 0], [0, 0, 2], [1, 1, 2]]; matching F(v_n, t_n) = (1, 0, 2).
    # image→text hinges 1 + F[n, m] - F[n, n]:  n=0: m=1 → 1, m=2 → 0;  n=1: m=0 → 1, m=2 → 3;  n=2: m=0, m=1 → 0.
    # text→image hinges 1 + F[m, n] - F[n, n]:  n=0: m=1 → 0, m=2 → 1;  n=1: m=0 → 2, m=2 → 2;  n=2: m=0 → 0, m=1 → 1.
    sum_loss = 0.5 * ((1 + 0 + 1 + 3 + 0 + 0) / 3 + (0 + 1 + 2 + 2 + 0 + 1) / 3)
    max_loss = 0.5 * ((1 + 3 + 0) / 3 + (1 + 2 + 1) / 3)
    assert symmetric_joint_embedding_loss(image, text, labels).item() == pytest.approx(sum_loss)
    assert symmetric_joint_embedding_loss(image, text, labels, violations="max").item() == pytest.approx(max_loss)
    # Symmetric: swapping the roles of images and texts gives the same loss.
    assert symmetric_joint_embedding_loss(text, image, labels).item() == pytest.approx(sum_loss)
    # With Δ = 0 only strict violations count: image→text n=1 vs m=2 (2); text→image n=1 vs m=0 and m=2 (1 each).
    assert symmetric_joint_embedding_loss(image, text, labels, margin=0.0).item() == pytest.approx(0.5 * (2 / 3 + 2 / 3))


def test_loss_with_repeated_labels_uses_class_means():
    # Samples 0 and 1 are class 0; the competitor of class 0 for sample 2 is their mean.
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # Class means: text (1, 0) and (0, 1); image (1, 0) and (0, 1). Matching F: (2, 0, 1).
    # image→text: n=0 vs class 1: 1 + 0 - 2 → 0;  n=1: 1 + 0 - 0 = 1;  n=2 vs class 0: 1 + 0 - 1 = 0.
    # text→image: n=0 vs class 1: 1 + 0 - 2 → 0;  n=1: 1 + 0 - 0 = 1;  n=2 vs class 0: 1 + 0 - 1 = 0.
    # Sample 0 never competes with sample 1 (same class), although F(v_0, t_1) = 0 < F(v_0, t_0) = 2 anyway
    # and F(v_1, t_0) = 2 > F(v_1, t_1) = 0 would be a violation of 3 if same-class pairs were negatives.
    expected = 0.5 * (1 / 3 + 1 / 3)
    assert symmetric_joint_embedding_loss(image, text, labels).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="two classes"):
        symmetric_joint_embedding_loss(image, text, torch.tensor([3, 3, 3]))


def make_split(first_index: int, per_class: int):
    """`per_class` synthetic 64 px flowers of each of CLASSES, as (uint8 images at 76 px, captions, labels)."""
    rows = [make_example(0, first_index + i, CLASSES[i % len(CLASSES)], 64) for i in range(per_class * len(CLASSES))]
    for row in rows:
        del row["attributes"]
    dataset = Dataset.from_list(rows, features=captioned_features(CLASS_NAMES))
    return images_to_uint8(dataset, load_size_for(64)), dataset["captions"], torch.tensor(dataset["label"])


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a busy 2-core machine a second thread costs several times more in
    synchronisation than it gains (and results are only bitwise reproducible for a fixed thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_splits():
    assert len({SPECIES[c].petal_color for c in CLASSES}) == len(CLASSES)
    return make_split(0, per_class=8), make_split(10_000, per_class=4)


def train_tiny(train, steps: int, test=None, seed: int = 0):
    torch.manual_seed(0)  # the same untrained text encoder every time
    encoder = build_char_cnn_rnn(**TINY_TEXT)
    test_kwargs = dict(zip(("test_images", "test_captions", "test_labels"), test)) if test else {}
    return train_joint_embedding(
        *train, encoder, steps=steps, batch_size=len(CLASSES), learning_rate=3e-3, image_channels=TINY_IMAGE,
        seed=seed, log_every=25, **test_kwargs,
    )


def test_training_learns_the_classes(tiny_splits, tmp_path):
    train, test = tiny_splits
    torch.manual_seed(0)
    untrained = zero_shot_accuracy(build_char_cnn_rnn(**TINY_TEXT), JointImageEncoder(64, TINY_IMAGE), *train, resolution=64)
    result = train_tiny(train, steps=300, test=test)
    trained = zero_shot_accuracy(result.text_encoder, result.image_encoder, *train, resolution=64)

    metrics = result.metrics
    assert metrics["train_loss"] < 0.5 * metrics["train_loss_initial"]
    assert trained["chance"] == metrics["zero_shot_chance"] == pytest.approx(1 / 6)
    assert untrained["top1"] < 0.3  # the chance reference: a random joint embedding
    assert trained["top1"] >= 0.4  # measured 0.60: train-class top-1 from the class-mean caption embeddings
    assert metrics["zero_shot_top1"] >= 0.3  # measured 0.67 on held-out images and captions of these classes
    assert not result.text_encoder.model.training and not any(p.requires_grad for p in result.text_encoder.model.parameters())

    result.text_encoder.save_pretrained(tmp_path)
    reloaded = TextEncoder.from_pretrained(tmp_path)
    assert reloaded.fingerprint() == result.text_encoder.fingerprint()
    assert zero_shot_accuracy(reloaded, result.image_encoder, *train, resolution=64) == trained


def test_training_is_deterministic_and_leaves_the_input_encoder_alone(tiny_splits):
    train, _ = tiny_splits
    first, second, other_seed = train_tiny(train, 5), train_tiny(train, 5), train_tiny(train, 5, seed=1)
    assert first.loss_history == second.loss_history
    assert first.text_encoder.fingerprint() == second.text_encoder.fingerprint()
    assert first.text_encoder.fingerprint() != other_seed.text_encoder.fingerprint()
    torch.manual_seed(0)
    assert first.text_encoder.fingerprint() != build_char_cnn_rnn(**TINY_TEXT).fingerprint()  # it did train


def test_bad_arguments_fail_before_training(tiny_splits):
    (images, captions, labels), _ = tiny_splits
    encoder = build_char_cnn_rnn(**TINY_TEXT)
    with pytest.raises(ValueError, match="uint8"):
        train_joint_embedding(images.float(), captions, labels, encoder)
    with pytest.raises(ValueError, match="caption lists"):
        train_joint_embedding(images, captions[:-1], labels, encoder)
    with pytest.raises(ValueError, match="two classes"):
        train_joint_embedding(images, captions, torch.zeros_like(labels), encoder)
    with pytest.raises(ValueError, match="smaller than resolution"):
        train_joint_embedding(images, captions, labels, encoder, resolution=128)
