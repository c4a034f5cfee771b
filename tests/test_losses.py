import math

import pytest
import torch

from t2i import GanClsDiscriminator
from t2i.losses import (
    auxiliary_class_loss,
    contrastive_matching_loss,
    discriminator_adversarial_loss,
    feature_matching_loss,
    flat_dirichlet,
    generator_adversarial_loss,
    interpolate_text_embeddings,
    matching_aware_gradient_penalty,
    mix_text_embeddings,
    mode_seeking_loss,
    text_image_matching_loss,
    unconditional_discriminator_loss,
)
from t2i.training import update_ema


def log_sigmoid(x):
    return math.log(1 / (1 + math.exp(-x)))


def test_gan_cls_discriminator_loss_averages_the_two_fake_terms():
    real_right, real_wrong, fake = torch.tensor([2.0]), torch.tensor([-1.0]), torch.tensor([0.5])
    # Reed, Algorithm 1: L_D = log s_r + (log(1 - s_w) + log(1 - s_f)) / 2, negated for minimisation.
    expected = -log_sigmoid(2.0) - (log_sigmoid(1.0) + log_sigmoid(-0.5)) / 2
    assert discriminator_adversarial_loss(real_right, real_wrong, fake).item() == pytest.approx(expected, rel=1e-6)


def test_one_sided_label_smoothing_changes_only_the_real_target():
    real_right, real_wrong, fake = torch.tensor([2.0]), torch.tensor([-1.0]), torch.tensor([0.5])
    smoothed = discriminator_adversarial_loss(real_right, real_wrong, fake, label_smoothing=0.1)
    expected = -(0.9 * log_sigmoid(2.0) + 0.1 * log_sigmoid(-2.0)) - (log_sigmoid(1.0) + log_sigmoid(-0.5)) / 2
    assert smoothed.item() == pytest.approx(expected, rel=1e-6)


def test_hinge_losses():
    real_right, real_wrong, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 1.0]), torch.tensor([-2.0, 0.0])
    # relu(1 - r) = [0.5, 0]; relu(1 + w) = [0.5, 2]; relu(1 + f) = [0, 1]
    expected = 0.25 + (1.25 + 0.5) / 2
    assert discriminator_adversarial_loss(real_right, real_wrong, fake, loss_type="hinge").item() == pytest.approx(expected)
    assert generator_adversarial_loss(torch.tensor([1.0, 3.0]), loss_type="hinge").item() == pytest.approx(-2.0)


def test_generator_loss_is_non_saturating():
    assert generator_adversarial_loss(torch.tensor([0.0])).item() == pytest.approx(math.log(2))
    assert generator_adversarial_loss(torch.tensor([-3.0])).item() == pytest.approx(-log_sigmoid(-3.0))
    with pytest.raises(ValueError, match="loss_type"):
        generator_adversarial_loss(torch.tensor([0.0]), loss_type="wasserstein")


def test_gan_int_interpolation():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    assert torch.equal(interpolate_text_embeddings(e1, e2), torch.tensor([[0.5, 2.0]]))
    assert torch.equal(interpolate_text_embeddings(e1, e2, beta=0.25), torch.tensor([[0.25, 3.0]]))


def test_mixtures_of_captions_by_hand():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    # Two captions at (β, 1 − β) is Reed's interpolation with the batch rolled by one.
    reed = mix_text_embeddings(e, torch.tensor([[0.25, 0.75]]).expand(3, 2))
    assert torch.allclose(reed, interpolate_text_embeddings(e, e.roll(1, dims=0), beta=0.25))
    # Row i mixes captions i, i − 1 and i − 2.
    weights = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([[0.5 * 1 + 0.25 * 4 + 0.25 * 0, 0.25 * 4 + 0.25 * 2], [0.0, 2.0], [1.0, 0.0]])
    assert torch.allclose(mix_text_embeddings(e, weights), expected)
    with pytest.raises(ValueError, match=r"weights must be \[B, K\]"):
        mix_text_embeddings(e, torch.ones(2, 2) / 2)


def test_flat_dirichlet_is_uniform_on_the_simplex_and_seeded():
    weights = flat_dirichlet(20000, 3, torch.Generator().manual_seed(0))
    assert (weights >= 0).all() and torch.allclose(weights.sum(dim=1), torch.ones(20000))
    assert torch.allclose(weights.mean(dim=0), torch.full((3,), 1 / 3), atol=0.01)
    # Flat Dirichlet(1, 1, 1): each weight is Beta(1, 2), variance 1/18.
    assert weights[:, 0].var().item() == pytest.approx(1 / 18, rel=0.05)
    assert torch.equal(weights[:5], flat_dirichlet(5, 3, torch.Generator().manual_seed(0)))
    beta = flat_dirichlet(20000, 2, torch.Generator().manual_seed(1))[:, 0]  # two captions: β ~ U(0, 1)
    assert beta.var().item() == pytest.approx(1 / 12, rel=0.05)


def test_unconditional_loss_by_hand():
    real, fake = torch.tensor([2.0]), torch.tensor([0.5])
    expected = -log_sigmoid(2.0) - log_sigmoid(-0.5)
    assert unconditional_discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert unconditional_discriminator_loss(torch.tensor([0.5]), torch.tensor([-2.0]), "hinge").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="loss_type"):
        unconditional_discriminator_loss(real, fake, "wasserstein")


def test_matching_aware_gradient_penalty_on_a_linear_discriminator():
    # D(x, e) = a·x + b·e has gradient (a, b) everywhere: MA-GP = 2 · ‖(a, b)‖⁶.
    a, b = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([2.0], requires_grad=True)
    images, text = torch.randn(3, 2, requires_grad=True), torch.randn(3, 1, requires_grad=True)
    logits = images @ a + text @ b
    penalty = matching_aware_gradient_penalty(logits, images, text)
    assert penalty.item() == pytest.approx(2 * 3.0**6)
    penalty.backward()
    assert torch.allclose(a.grad, 2 * 6 * 3.0**4 * torch.tensor([1.0, 2.0]))  # d/da 2‖g‖⁶ = 12‖g‖⁴ a: it trains D


def test_matching_aware_gradient_penalty_through_the_discriminator():
    discriminator = GanClsDiscriminator(text_embed_dim=8, ndf=8)
    images, text = torch.randn(2, 3, 64, 64, requires_grad=True), torch.randn(2, 8, requires_grad=True)
    penalty = matching_aware_gradient_penalty(discriminator(images, text).logits, images, text)
    penalty.backward()
    assert penalty.item() > 0 and discriminator.to_logit.weight.grad.abs().sum() > 0


def test_feature_matching_and_aux_class_losses():
    real, fake = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [2.0, 2.0]], requires_grad=True)
    assert feature_matching_loss(real, fake).item() == pytest.approx((2 - 1) ** 2 + (3 - 1) ** 2)
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    assert auxiliary_class_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(math.log(1 + math.exp(-10)), rel=1e-3)
    assert auxiliary_class_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(10.0, rel=1e-3)


def test_ema_update():
    model, ema = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(3.0)
        ema.weight.fill_(1.0)
        model.running_mean.fill_(5.0)
    update_ema(ema, model, decay=0.75)
    assert torch.allclose(ema.weight, torch.full((2,), 1.5))  # 0.75 · 1 + 0.25 · 3
    assert torch.equal(ema.running_mean, model.running_mean)


def test_mode_seeking_loss_by_hand():
    images_a, images_b = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    images_b[0] += 0.5  # pair 0: images 0.5 apart per pixel; pair 1: identical images
    noise_a, noise_b = torch.zeros(2, 4), torch.ones(2, 4)  # every pair's noise 1 apart
    # mean ratio (0.5 / 1 + 0 / 1) / 2 = 0.25, so the loss is 1 / 0.25
    assert mode_seeking_loss(images_a, images_b, noise_a, noise_b, eps=0.0).item() == pytest.approx(4.0)


def test_pooled_mode_seeking_ignores_speckle_but_not_regions():
    noise_a, noise_b = torch.zeros(1, 4), torch.ones(1, 4)
    base = torch.zeros(1, 3, 4, 4)
    speckle = base.clone()
    speckle[..., ::2, ::2], speckle[..., 1::2, 1::2] = 1.0, 1.0  # a checkerboard: every 2×2 block averages 0.5
    speckle = speckle - 0.5  # ... now 0: the pairs differ only at the finest scale
    region = base.clone()
    region[..., :2, :2] = 1.0  # one quarter of the image brighter
    assert mode_seeking_loss(base, speckle, noise_a, noise_b, eps=0.0).item() == pytest.approx(2.0)  # pixels: 0.5 apart
    assert mode_seeking_loss(base, speckle, noise_a, noise_b, scale=2).item() == pytest.approx(1e5)  # pooled: none
    for scale in (1, 2):  # a whole region moving counts the same at either scale: 1/4 of the pixels, 1 apart
        assert mode_seeking_loss(base, region, noise_a, noise_b, eps=0.0, scale=scale).item() == pytest.approx(4.0)


def test_mode_seeking_loss_falls_as_the_noise_is_used():
    noise_a, noise_b = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    projection = torch.randn(10, 48, generator=torch.Generator().manual_seed(2))
    text = torch.randn(8, 48, generator=torch.Generator().manual_seed(3))
    losses = [mode_seeking_loss(text + w * noise_a @ projection, text + w * noise_b @ projection, noise_a, noise_b).item() for w in (0.01, 0.1, 1.0)]
    assert losses[0] > losses[1] > losses[2]
    collapsed = mode_seeking_loss(text, text.clone(), noise_a, noise_b)  # noise ignored: only ε keeps it finite
    assert collapsed.item() > 1e4


def test_text_image_matching_loss_by_hand():
    # Two pairs, orthogonal: cosine 1 with the own caption, 0 with the other; logits 10 and 0 in both directions.
    images, texts = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64), torch.tensor([[1.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    expected = -math.log(math.exp(10) / (math.exp(10) + 1))
    assert text_image_matching_loss(images, texts).item() == pytest.approx(expected, rel=1e-5)
    swapped = text_image_matching_loss(images, texts.flip(0))  # every image now closest to the other caption
    assert swapped.item() == pytest.approx(-math.log(1 / (math.exp(10) + 1)), rel=1e-5)


def test_contrastive_matching_loss_by_hand():
    # Logits are the raw inner products: [[2, 0], [0, 3]] — each image scores its own caption highest.
    images, texts = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    row = lambda own, other: -math.log(math.exp(own) / (math.exp(own) + math.exp(other)))
    expected = (row(2, 0) + row(3, 0)) / 2  # rows and columns are the same here: the matrix is diagonal
    assert contrastive_matching_loss(images, texts).item() == pytest.approx(expected, rel=1e-9)
    # A caption that is as true of the other image (same class) is no negative: both softmaxes leave it out.
    same = torch.ones(2, 2, dtype=torch.bool)
    assert contrastive_matching_loss(images, texts, same).item() == 0.0
    swapped = contrastive_matching_loss(images, texts.flip(0))  # each image now scores the other caption highest
    assert swapped.item() == pytest.approx((row(0, 2) + row(0, 3)) / 2, rel=1e-9)


def test_contrastive_hard_negatives_join_the_image_side_only():
    images, texts = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    # Row i's counterfactual scores 1 and 4 with its image: a third candidate for each image's pick, none for the
    # captions' pick (a counterfactual has no image of its own).
    hard = torch.tensor([[0.5, 0.0], [0.0, 4 / 3]], dtype=torch.float64)
    lse = lambda *x: math.log(sum(math.exp(v) for v in x))
    image_side = ((lse(2, 0, 1) - 2) + (lse(0, 3, 4) - 3)) / 2
    caption_side = ((lse(2, 0) - 2) + (lse(0, 3) - 3)) / 2
    loss = contrastive_matching_loss(images, texts, hard_negative_features=hard)
    assert loss.item() == pytest.approx((image_side + caption_side) / 2, rel=1e-9)
    # A hard negative that is the right text itself is no negative: left out, the loss is the plain one.
    true = torch.tensor([True, True])
    assert contrastive_matching_loss(images, texts, None, hard, true).item() == pytest.approx(contrastive_matching_loss(images, texts).item(), rel=1e-12)
    # The hard negative outscoring the right caption (row 2: 4 > 3) costs more than the plain loss.
    assert loss.item() > contrastive_matching_loss(images, texts).item() + 0.3


def test_conditioning_augmentation_kl_by_hand():
    from t2i.losses import conditioning_augmentation_kl

    # μ = 0, σ = 1 is the prior itself.
    assert conditioning_augmentation_kl(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    # One element μ = 2, log σ² = 0 → ½·4 = 2; one element μ = 0, log σ² = log 4 → ½(4 − 1 − log 4); mean over 2 × 2.
    mean = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    log_variance = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    expected = (2.0 + 0.5 * (4.0 - 1.0 - math.log(4.0))) / 4
    assert conditioning_augmentation_kl(mean, log_variance).item() == pytest.approx(expected)
