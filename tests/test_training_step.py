"""The library's GAN-CLS step (t2i.training.train_step) on tiny models: what each objective switch changes."""

import math

import pytest
import torch
from accelerate import Accelerator

from t2i import GanClsDiscriminator, GanClsGenerator
from t2i.training import GanClsObjective, non_finite, train_step


def _models(seed=0):
    torch.manual_seed(seed)
    generator = GanClsGenerator(text_embed_dim=12, noise_dim=8, text_proj_dim=8, ngf=8, fusion="affine",
                                normalize_text=True, text_batch_norm=True)
    discriminator = GanClsDiscriminator(text_embed_dim=12, text_proj_dim=8, ndf=8, text_batch_norm=True,
                                        conditioning="projection", projection_scales=2)
    return generator, discriminator


def _step(objective, rng_seed=0, model_seed=0):
    accelerator = Accelerator(cpu=True)
    generator, discriminator = _models(model_seed)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(123)
    batch = {"pixel_values": torch.rand(8, 3, 64, 64, generator=data) * 2 - 1,
             "text_embeds": torch.randn(8, 12, generator=data), "wrong_text_embeds": torch.randn(8, 12, generator=data)}
    losses = train_step(accelerator, generator, discriminator, opt_g, opt_d, batch, objective, torch.Generator().manual_seed(rng_seed))
    return losses, generator, discriminator


def test_unconditional_term_adds_to_both_losses():
    plain, _, _ = _step(GanClsObjective())
    joint, _, _ = _step(GanClsObjective(unconditional_weight=1.0))
    # Same models, data and noise: the D pass is identical, so the difference is the (positive) BCE term itself.
    assert joint["loss_d"] > plain["loss_d"] + 0.5
    assert joint["loss_g"] > plain["loss_g"] + 0.1
    assert joint["d_real_right"] == pytest.approx(plain["d_real_right"])


def test_random_mixtures_are_drawn_from_the_step_generator():
    objective = GanClsObjective(int_beta=None, int_captions=3)
    first, g1, _ = _step(objective, rng_seed=0)
    again, g2, _ = _step(objective, rng_seed=0)
    other, g3, _ = _step(objective, rng_seed=1)
    params = lambda model: torch.cat([p.detach().flatten() for p in model.parameters()])
    assert first == again and torch.equal(params(g1), params(g2))  # seeded: a resumed run replays it
    assert not torch.equal(params(g1), params(g3))


def test_contrastive_term_adds_to_both_losses_and_needs_a_projection_discriminator():
    plain, _, _ = _step(GanClsObjective())
    contrastive, g, _ = _step(GanClsObjective(contrastive_weight=1.0))
    again, g_again, _ = _step(GanClsObjective(contrastive_weight=1.0))
    # One D pass for both: the difference is the symmetric cross-entropy over 8 captions, near log 8 at the start.
    assert contrastive["d_real_right"] == pytest.approx(plain["d_real_right"])
    assert 0.5 < contrastive["loss_d"] - plain["loss_d"] < 2 * math.log(8)
    assert contrastive["loss_g"] > plain["loss_g"] + 0.5
    assert contrastive == again and all(torch.equal(a, b) for a, b in zip(g.parameters(), g_again.parameters()))
    # For D alone: the same D update, and G's loss is the adversarial term without the contrastive one.
    d_only, _, _ = _step(GanClsObjective(contrastive_weight=1.0, contrastive_generator=False))
    assert d_only["loss_d"] == pytest.approx(contrastive["loss_d"])
    assert 0.5 < contrastive["loss_g"] - d_only["loss_g"] < 2 * math.log(8)
    # The wrong texts as hard negatives: the same adversarial D pass, one more candidate per image for D and G.
    hard, g_hard, _ = _step(GanClsObjective(contrastive_weight=1.0, contrastive_hard_negatives=True))
    assert hard["d_real_right"] == pytest.approx(contrastive["d_real_right"]) and hard["d_fake"] == pytest.approx(contrastive["d_fake"])
    assert contrastive["loss_d"] < hard["loss_d"] < contrastive["loss_d"] + math.log(9 / 8) + 1e-4  # ≤: one more of 9 candidates
    hard_d_only, _, _ = _step(GanClsObjective(contrastive_weight=1.0, contrastive_hard_negatives=True, contrastive_generator=False))
    assert hard_d_only["loss_d"] == pytest.approx(hard["loss_d"])
    assert 0.5 < hard["loss_g"] - hard_d_only["loss_g"] < 2 * math.log(9)  # G's term over 9 candidates per fake
    assert not torch.equal(next(g_hard.parameters()), next(g.parameters()))
    with_mixtures, _, _ = _step(GanClsObjective(contrastive_weight=1.0, contrastive_hard_negatives=True, int_fraction=0.5, mode_seeking_weight=0.5))
    assert math.isfinite(with_mixtures["loss_g"])  # G's second text block lines up with the GAN-INT mixtures too
    accelerator = Accelerator(cpu=True)
    generator, _ = _models()
    concat = GanClsDiscriminator(text_embed_dim=12, text_proj_dim=8, ndf=8)
    batch = {"pixel_values": torch.rand(4, 3, 64, 64) * 2 - 1, "text_embeds": torch.randn(4, 12), "wrong_text_embeds": torch.randn(4, 12)}
    with pytest.raises(ValueError, match="projection discriminator"):
        train_step(accelerator, generator, concat, torch.optim.Adam(generator.parameters()), torch.optim.Adam(concat.parameters()),
                   batch, GanClsObjective(contrastive_weight=1.0), torch.Generator().manual_seed(0))


def test_counterfactual_fakes_are_drawn_for_g_and_need_the_loaders_counterfactuals():
    accelerator = Accelerator(cpu=True)
    data = torch.Generator().manual_seed(123)
    batch = {"pixel_values": torch.rand(8, 3, 64, 64, generator=data) * 2 - 1, "text_embeds": torch.randn(8, 12, generator=data),
             "wrong_text_embeds": torch.randn(8, 12, generator=data), "counterfactual_text_embeds": torch.randn(8, 12, generator=data),
             "counterfactual_valid": torch.tensor([True, True, False, True, True, True, True, True])}

    def step(objective, batch=batch, rng_seed=0):
        generator, discriminator = _models()
        opt_g, opt_d = torch.optim.Adam(generator.parameters(), lr=1e-3), torch.optim.Adam(discriminator.parameters(), lr=1e-3)
        losses = train_step(accelerator, generator, discriminator, opt_g, opt_d, batch, objective, torch.Generator().manual_seed(rng_seed))
        return losses, generator

    objective = GanClsObjective(gan_int=False, contrastive_weight=1.0, contrastive_hard_negatives=True, counterfactual_fakes=0.5)
    plain, g_plain = step(GanClsObjective(gan_int=False, contrastive_weight=1.0, contrastive_hard_negatives=True))
    first, g_first = step(objective)
    again, g_again = step(objective)
    assert first == again and torch.equal(next(g_first.parameters()), next(g_again.parameters()))
    assert math.isfinite(first["loss_g"]) and first["loss_g"] != plain["loss_g"]
    assert not torch.equal(next(g_first.parameters()), next(g_plain.parameters()))
    # The edits change G's update: the same step with other counterfactual texts trains G differently.
    other = {**batch, "counterfactual_text_embeds": batch["counterfactual_text_embeds"].flip(0)}
    assert step(objective, other)[0]["loss_g"] != first["loss_g"]
    # With GAN-INT and mode seeking too, every group of fakes lines up with its texts.
    assert math.isfinite(step(GanClsObjective(contrastive_weight=1.0, contrastive_hard_negatives=True, counterfactual_fakes=0.25,
                                              int_fraction=0.5, mode_seeking_weight=0.5))[0]["loss_g"])
    with pytest.raises(ValueError, match="counterfactual_fakes needs the batch's counterfactual_text_embeds"):
        step(objective, {k: v for k, v in batch.items() if not k.startswith("counterfactual")})


def test_a_step_with_a_spectral_norm_discriminator_trains_it():
    accelerator = Accelerator(cpu=True)
    generator, _ = _models()
    discriminator = GanClsDiscriminator(text_embed_dim=12, text_proj_dim=8, ndf=8, text_batch_norm=True,
                                        conditioning="projection", projection_scales=2, spectral_norm=True)
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    data = torch.Generator().manual_seed(123)
    batch = {"pixel_values": torch.rand(8, 3, 64, 64, generator=data) * 2 - 1,
             "text_embeds": torch.randn(8, 12, generator=data), "wrong_text_embeds": torch.randn(8, 12, generator=data)}
    opt_g, opt_d = torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())
    losses = train_step(accelerator, generator, discriminator, opt_g, opt_d, batch,
                        GanClsObjective(int_beta=None, int_captions=3, mode_seeking_weight=0.5), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    changed = [k for k, v in discriminator.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight.original") for k in changed) and any(k.endswith("_u") for k in changed)


def _generator_texts(objective):
    """The text embeddings the generator is called with in one step, read by a forward pre-hook."""
    seen = []
    accelerator = Accelerator(cpu=True)
    generator, discriminator = _models()
    generator.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[1].detach().clone()))
    data = torch.Generator().manual_seed(123)
    batch = {"pixel_values": torch.rand(8, 3, 64, 64, generator=data) * 2 - 1,
             "text_embeds": torch.randn(8, 12, generator=data), "wrong_text_embeds": torch.randn(8, 12, generator=data)}
    opt_g, opt_d = torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())
    train_step(accelerator, generator, discriminator, opt_g, opt_d, batch, objective, torch.Generator().manual_seed(0))
    return seen[0], batch["text_embeds"]


@pytest.mark.parametrize("on_mixtures", [False, True])
def test_mode_seeking_pairs_captions_or_mixtures(on_mixtures):
    objective = GanClsObjective(int_beta=None, int_captions=3, mode_seeking_weight=1.0, mode_seeking_mixtures=on_mixtures)
    texts, captions = _generator_texts(objective)
    assert texts.shape == (8 + 8 + 4, 12)  # B captions, B mixtures, B/2 second images
    assert torch.equal(texts[:8], captions)
    mixtures, second = texts[8:16], texts[16:]
    if on_mixtures:  # the first B/4 captions and the first B/4 mixtures get a second image
        assert torch.equal(second, torch.cat([captions[:2], mixtures[:2]]))
    else:
        assert torch.equal(second, captions[:4])
    assert not any(torch.allclose(m, c) for m in mixtures for c in captions)


@pytest.mark.parametrize("fraction, mixtures", [(1.0, 8), (0.25, 2), (0.01, 1)])
def test_int_fraction_mixes_that_share_of_the_captions(fraction, mixtures):
    objective = GanClsObjective(int_beta=None, int_captions=3, int_fraction=fraction, mode_seeking_weight=1.0,
                                mode_seeking_mixtures=True)
    texts, captions = _generator_texts(objective)
    on_mixtures = min(2, mixtures)  # ⌊B/4⌋ pairs on mixtures, when there are that many
    assert texts.shape == (8 + mixtures + 4, 12)
    assert torch.equal(texts[:8], captions)
    full, _ = _generator_texts(GanClsObjective(int_beta=None, int_captions=3, mode_seeking_weight=1.0, mode_seeking_mixtures=True))
    assert torch.equal(texts[8:8 + mixtures], full[8:8 + mixtures])  # the same mixtures of the same first captions
    second = texts[8 + mixtures:]
    assert torch.equal(second, torch.cat([captions[:4 - on_mixtures], texts[8:8 + on_mixtures]]))


def test_gan_cls_and_gan_int_terms_weigh_equally_whatever_the_fraction(monkeypatch):
    """The generator loss is (GAN-CLS term + GAN-INT term) / 2: a spy on the adversarial loss sees the two row sets."""
    import t2i.training.gan_cls as gan_cls

    seen = []
    real_loss = gan_cls.generator_adversarial_loss
    monkeypatch.setattr(gan_cls, "generator_adversarial_loss", lambda logits, loss: seen.append(logits.shape[0]) or real_loss(logits, loss))
    losses, _, _ = _step(GanClsObjective(int_beta=None, int_captions=3, int_fraction=0.25))
    assert seen == [8, 2]
    seen.clear()
    plain, _, _ = _step(GanClsObjective(gan_int=False))
    assert seen == [8] and losses["loss_g"] != pytest.approx(plain["loss_g"])


@pytest.mark.parametrize("batch_size", [2, 3, 8])
@pytest.mark.parametrize("conditioning_augmentation", [False, True])
def test_mode_seeking_compares_images_of_one_text_with_their_own_noise(batch_size, conditioning_augmentation, monkeypatch):
    """A spy on the loss and a hook on G: each pair the loss compares is (text, z₁, ε) and (text, z₂, ε)."""
    import t2i.training.gan_cls as gan_cls

    compared, calls = [], []
    real_loss = gan_cls.mode_seeking_loss
    monkeypatch.setattr(gan_cls, "mode_seeking_loss", lambda *args, **kwargs: compared.append(args) or real_loss(*args, **kwargs))
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=12, noise_dim=8, text_proj_dim=8, ngf=8, fusion="affine",
                                conditioning_augmentation=conditioning_augmentation, text_batch_norm=not conditioning_augmentation)
    discriminator = GanClsDiscriminator(text_embed_dim=12, text_proj_dim=8, ndf=8, conditioning="projection")
    generator.register_forward_hook(lambda module, inputs, output: calls.append((inputs, output)))
    data = torch.Generator().manual_seed(123)
    batch = {"pixel_values": torch.rand(batch_size, 3, 64, 64, generator=data) * 2 - 1,
             "text_embeds": torch.randn(batch_size, 12, generator=data), "wrong_text_embeds": torch.randn(batch_size, 12, generator=data)}
    objective = GanClsObjective(int_beta=None, int_captions=3, mode_seeking_weight=1.0, mode_seeking_mixtures=True)
    train_step(Accelerator(cpu=True), generator, discriminator, torch.optim.Adam(generator.parameters()),
               torch.optim.Adam(discriminator.parameters()), batch, objective, torch.Generator().manual_seed(0))
    (noise, texts, code_noise), fake = calls[0]
    images_a, images_b, noise_a, noise_b = compared[0][:4]
    pairs = batch_size // 2
    assert images_b.shape[0] == pairs and torch.equal(images_b, fake[2 * batch_size:].float())
    assert torch.equal(noise_b, noise[2 * batch_size:])
    for i in range(pairs):  # row i of the first images is the fake whose text, and ε, the i-th second image shares
        row = next(r for r in range(2 * batch_size) if torch.equal(fake[r].float(), images_a[i]))
        assert torch.equal(noise[row], noise_a[i]) and torch.equal(texts[row], texts[2 * batch_size + i])
        assert not torch.equal(noise[row], noise_b[i])
        if conditioning_augmentation:
            assert torch.equal(code_noise[row], code_noise[2 * batch_size + i])
    on_mixtures = sum(torch.equal(images_a[i], fake[r].float()) for i in range(pairs) for r in range(batch_size, 2 * batch_size))
    assert on_mixtures == batch_size // 4  # the rest are captions


def test_mode_seeking_on_mixtures_changes_the_update():
    on_captions, g1, _ = _step(GanClsObjective(int_beta=None, int_captions=3, mode_seeking_weight=1.0))
    on_mixtures, g2, _ = _step(GanClsObjective(int_beta=None, int_captions=3, mode_seeking_weight=1.0, mode_seeking_mixtures=True))
    assert on_captions["loss_g"] != pytest.approx(on_mixtures["loss_g"])
    params = lambda model: torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(params(g1), params(g2))


@pytest.mark.parametrize("fields, message", [
    ({"int_beta": 1.5}, "int_beta must be in"),
    ({"int_captions": 3}, "> 2 only with int_beta=None"),
    ({"int_captions": 1, "int_beta": None}, "int_captions must be ≥ 2"),
    ({"unconditional_weight": -1.0}, "unconditional_weight must be ≥ 0"),
    ({"contrastive_weight": -1.0}, "contrastive_weight must be ≥ 0"),
    ({"contrastive_generator": False}, "needs contrastive_weight > 0"),
    ({"contrastive_hard_negatives": True}, "needs contrastive_weight > 0"),
    ({"counterfactual_fakes": 1.5}, "counterfactual_fakes must be in"),
    ({"counterfactual_fakes": float("nan")}, "counterfactual_fakes must be in"),
    ({"int_fraction": 0.0}, "int_fraction must be in"),
    ({"int_fraction": 1.5}, "int_fraction must be in"),
    ({"int_fraction": float("nan")}, "int_fraction must be in"),
    ({"gan_int": False, "mode_seeking_mixtures": True, "mode_seeking_weight": 1.0}, "needs gan_int"),
    ({"mode_seeking_scale": 0, "mode_seeking_weight": 1.0}, "mode_seeking_scale must be ≥ 1"),
    ({"mode_seeking_mixtures": True}, "need mode_seeking_weight > 0"),
    ({"mode_seeking_scale": 4}, "need mode_seeking_weight > 0"),
])
def test_bad_objectives_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        GanClsObjective(**fields)


def test_a_discriminator_only_step_trains_d_and_leaves_g_weights_alone():
    accelerator = Accelerator(cpu=True)
    generator, discriminator = _models()
    g_before = {k: v.clone() for k, v in generator.named_parameters()}
    d_before = {k: v.clone() for k, v in discriminator.named_parameters()}
    data = torch.Generator().manual_seed(123)
    batch = {"pixel_values": torch.rand(8, 3, 64, 64, generator=data) * 2 - 1,
             "text_embeds": torch.randn(8, 12, generator=data), "wrong_text_embeds": torch.randn(8, 12, generator=data)}
    opt_g, opt_d = torch.optim.Adam(generator.parameters(), lr=1e-3), torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    objective = GanClsObjective(int_beta=None, int_captions=3, mode_seeking_weight=0.5, mode_seeking_mixtures=True)
    losses = train_step(accelerator, generator, discriminator, opt_g, opt_d, batch, objective, torch.Generator().manual_seed(0),
                        update_generator=False)
    assert set(losses) == {"loss_d", "d_real_right", "d_real_wrong", "d_fake"}
    assert all(torch.equal(p, g_before[k]) and p.grad is None for k, p in generator.named_parameters())
    assert any(not torch.equal(p, d_before[k]) for k, p in discriminator.named_parameters())
    # The D half of the step is the full step's: same models, data and noise give the same D loss.
    full, _, _ = _step(objective)
    assert full["loss_d"] == pytest.approx(losses["loss_d"]) and "loss_g" in full


def test_non_finite_names_the_first_bad_loss_then_parameter():
    generator, discriminator = torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    modules = {"generator": generator, "discriminator": discriminator}
    assert non_finite({"loss_d": 1.5, "loss_g": -2.0}, modules) is None
    assert non_finite({"loss_d": 1.5, "loss_g": float("inf")}, modules) == "loss_g = inf"
    assert non_finite({"loss_d": float("nan"), "loss_g": float("inf")}, modules) == "loss_d = nan"  # losses first, in order
    with torch.no_grad():
        discriminator[1].bias[0] = float("-inf")
    assert non_finite({"loss_d": 1.5}, modules) == "discriminator parameter 1.bias"
    assert non_finite({"loss_d": 1.5}) is None  # parameters only when asked: the check of saving steps
    with torch.no_grad():
        generator.weight[1, 0] = float("nan")
    assert non_finite({}, modules) == "generator parameter weight"


def test_non_finite_names_an_optimizer_state_that_overflowed_while_the_weights_stay_finite():
    # A gradient of 1e30 squares to inf in Adam's second moment; its update m / sqrt(v) is then 0, so the weight
    # stays finite and never moves again: only the optimizer state shows the run is dead.
    layer = torch.nn.Sequential(torch.nn.Linear(2, 1))
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    layer(torch.ones(4, 2)).sum().mul(1e30).backward()
    optimizer.step()
    assert all(p.isfinite().all() for p in layer.parameters())
    assert non_finite({"loss": 1.0}, {"generator": layer}) is None
    assert non_finite({"loss": 1.0}, {"generator": layer}, {"generator": optimizer}) == "generator optimizer exp_avg_sq of 0.weight"
    norm = torch.nn.BatchNorm1d(1)
    norm.running_var.fill_(float("nan"))
    assert non_finite({}, {"generator": norm}) == "generator buffer running_var"  # BatchNorm statistics too


def test_a_step_trains_the_region_masks_and_their_text_projections():
    accelerator = Accelerator(cpu=True)
    generator, _ = _models()
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(text_embed_dim=12, text_proj_dim=8, ndf=8, text_batch_norm=True,
                                        conditioning="projection", projection_regions=3)
    before = {k: v.clone() for k, v in discriminator.state_dict().items() if k.startswith("region_")}
    data = torch.Generator().manual_seed(123)
    batch = {"pixel_values": torch.rand(8, 3, 64, 64, generator=data) * 2 - 1,
             "text_embeds": torch.randn(8, 12, generator=data), "wrong_text_embeds": torch.randn(8, 12, generator=data)}
    opt_g, opt_d = torch.optim.SGD(generator.parameters(), lr=0.1), torch.optim.SGD(discriminator.parameters(), lr=0.1)
    losses = train_step(accelerator, generator, discriminator, opt_g, opt_d, batch,
                        GanClsObjective(contrastive_weight=1.0), torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in losses.values())
    for name, value in before.items():  # the masks learn too: the match gradient reaches them through the pooling
        assert not torch.equal(discriminator.state_dict()[name], value), name
