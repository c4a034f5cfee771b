"""One GAN-CLS / GAN-INT-CLS training step (Reed et al., ICML 2016, Algorithm 1), with an explicit objective.

    objective = GanClsObjective(gan_int=True, mode_seeking_weight=0.5, diff_augment=("translation", "cutout"))
    losses = train_step(accelerator, generator, discriminator, optimizer_g, optimizer_d, batch, objective, rng)

Reed's algorithm is the spine of `train_step`: fakes from the right text (and, for GAN-INT, from interpolated
text), one discriminator update on (real, right), (real, wrong) and (fake, right), then one generator update.
Every optional term is a field of `GanClsObjective` whose default switches it off, so the signature says what a
step depends on and the defaults are the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffaugment import DIFF_AUGMENT_POLICIES, diff_augment
from ..losses import (
    LOSS_TYPES,
    auxiliary_class_loss,
    conditioning_augmentation_kl,
    contrastive_matching_loss,
    discriminator_adversarial_loss,
    feature_matching_loss,
    flat_dirichlet,
    generator_adversarial_loss,
    matching_aware_gradient_penalty,
    mix_text_embeddings,
    mode_seeking_loss,
    text_image_matching_loss,
    unconditional_discriminator_loss,
)
from ..text_encoders import sentence_embeds


@dataclass(frozen=True)
class GanClsObjective:
    """What one step optimises. The defaults are Reed et al.'s GAN-INT-CLS (BCE, β = 0.5); each other field adds
    one published term or switch (all off by default).

    Attributes:
        loss: "bce" (Reed) or "hinge" (DF-GAN).
        gan_int: GAN-INT generator terms on interpolated text embeddings.
        int_beta: the interpolation weight β in β·e₁ + (1 − β)·e₂, in [0, 1]; ``None`` draws the weights of each
            row from the flat Dirichlet (β ~ U(0, 1) for two captions).
        int_captions: how many captions of the batch each GAN-INT embedding mixes (2 is Reed's; more reach the
            interior of the caption set, where short prompts embed); > 2 needs ``int_beta=None``.
        int_fraction: the share of the batch's B captions that also get a GAN-INT mixture, in (0, 1] (Reed: 1).
            The mixtures cost a generator pass each; a quarter of them costs a quarter as much, and the GAN-CLS
            and GAN-INT terms keep equal weight in the generator loss whatever their numbers.
        unconditional_weight: StackGAN++'s unconditional real/fake term for D and G (needs a projection D), ≥ 0.
        label_smoothing: one-sided label smoothing of the real target, in [0, 1).
        feature_matching_weight: Salimans et al.'s feature matching, ≥ 0.
        ma_gp: DF-GAN's matching-aware gradient penalty (k = 2, p = 6).
        aux_class_weight: TAC-GAN's auxiliary class loss (needs labels and a D class head), ≥ 0.
        matching_loss_weight: AttnGAN-style text-image matching through a frozen joint embedding θ, ≥ 0.
        contrastive_weight: XMC-GAN's image–sentence contrastive term on D's projection scores, for D on real
            images and for G on its fakes (needs a projection D), ≥ 0. Captions of the same class, and identical
            texts, are not negatives.
        contrastive_generator: also give G the contrastive term on its fakes (XMC-GAN); ``False`` keeps it for D
            alone, so that G is taught the sharper text check only through D's adversarial logit.
        contrastive_hard_negatives: each image's GAN-CLS wrong text (``wrong_text_embeds``) joins its contrastive
            candidates, for D and G: NegCLIP's hard negatives when the wrong text is a counterfactual caption (the
            loader's ``counterfactual_negatives``), one word away from the right one (needs ``contrastive_weight``).
            G's pass then scores a second text block, which a D with text BatchNorm normalises together with
            the first (as it does the wrong texts on real images), so G's logits change with it too.
        counterfactual_fakes: the share of the batch, in [0, 1], whose counterfactual caption G also draws
            (``counterfactual_text_embeds`` of the batch, for its rows with ``counterfactual_valid``): the right
            caption with one value changed, mostly a combination of values no training image has. As GAN-INT's
            interpolations, only G's loss sees them (D's adversarial logit, with equal weight, and, with
            ``contrastive_weight``, the contrastive pick among them, the source caption a hard negative with
            ``contrastive_hard_negatives``), so G is trained on new combinations that D has learnt to check.
        mode_seeking_weight: MSGAN's mode-seeking term, ≥ 0.
        mode_seeking_scale: the average-pooling factor of the images before mode seeking's distance (1: MSGAN's
            pixel distance), ≥ 1.
        mode_seeking_mixtures: give ⌊B/4⌋ of the ⌊B/2⌋ mode-seeking pairs to GAN-INT mixtures instead of captions
            (half of them when 4 divides B; needs ``gan_int``), so that the noise also matters between and inside
            the captions, where short prompts embed.
        kl_weight: StackGAN's KL term for a generator with conditioning augmentation (Zhang et al. use 2), ≥ 0.
        diff_augment: DiffAugment policies applied to every image D sees (subset of ``DIFF_AUGMENT_POLICIES``).
    """

    loss: str = "bce"
    gan_int: bool = True
    int_beta: float | None = 0.5
    int_captions: int = 2
    int_fraction: float = 1.0
    unconditional_weight: float = 0.0
    label_smoothing: float = 0.0
    feature_matching_weight: float = 0.0
    ma_gp: bool = False
    aux_class_weight: float = 0.0
    matching_loss_weight: float = 0.0
    contrastive_weight: float = 0.0
    contrastive_generator: bool = True
    contrastive_hard_negatives: bool = False
    counterfactual_fakes: float = 0.0
    mode_seeking_weight: float = 0.0
    mode_seeking_mixtures: bool = False
    mode_seeking_scale: int = 1
    kl_weight: float = 0.0
    diff_augment: tuple[str, ...] = ()

    def __post_init__(self):
        if self.loss not in LOSS_TYPES:
            raise ValueError(f"loss must be one of {LOSS_TYPES}, got {self.loss!r}")
        if self.int_beta is not None and not 0.0 <= self.int_beta <= 1.0:
            raise ValueError(f"int_beta must be in [0, 1] or None, got {self.int_beta}")
        if self.int_captions < 2 or (self.int_captions > 2 and self.int_beta is not None):
            raise ValueError(f"int_captions must be ≥ 2, and > 2 only with int_beta=None; got {self.int_captions} "
                             f"with int_beta={self.int_beta}")
        if not 0.0 < self.int_fraction <= 1.0:  # NaN fails this too
            raise ValueError(f"int_fraction must be in (0, 1], got {self.int_fraction}")
        if not 0.0 <= self.counterfactual_fakes <= 1.0:
            raise ValueError(f"counterfactual_fakes must be in [0, 1], got {self.counterfactual_fakes}")
        if self.mode_seeking_scale < 1:
            raise ValueError(f"mode_seeking_scale must be ≥ 1, got {self.mode_seeking_scale}")
        if self.mode_seeking_mixtures and not self.gan_int:
            raise ValueError("mode_seeking_mixtures needs gan_int: without it there are no mixtures to pair")
        if self.mode_seeking_weight == 0 and (self.mode_seeking_mixtures or self.mode_seeking_scale != 1):
            raise ValueError("mode_seeking_mixtures and mode_seeking_scale shape mode seeking: they need mode_seeking_weight > 0")
        if self.contrastive_weight == 0 and (not self.contrastive_generator or self.contrastive_hard_negatives):
            raise ValueError("contrastive_generator=False and contrastive_hard_negatives shape the contrastive term: "
                             "each needs contrastive_weight > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        weights = ("feature_matching_weight", "aux_class_weight", "matching_loss_weight", "contrastive_weight",
                   "mode_seeking_weight", "kl_weight", "unconditional_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if set(self.diff_augment) - set(DIFF_AUGMENT_POLICIES):
            raise ValueError(f"diff_augment must be a subset of {DIFF_AUGMENT_POLICIES}, got {self.diff_augment}")


def train_step(
    accelerator,
    generator,
    discriminator,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    objective: GanClsObjective,
    rng: torch.Generator,
    joint_image_encoder: torch.nn.Module | None = None,
    update_generator: bool = True,
) -> dict[str, float]:
    """One discriminator update then one generator update; returns the losses for logging.

    Args:
        accelerator: the ``accelerate.Accelerator`` that prepared the models (autocast, backward).
        generator, discriminator: prepared ``GanClsGenerator`` / ``GanClsDiscriminator``.
        batch: ``pixel_values`` [B, 3, R, R] in [-1, 1], ``text_embeds`` and ``wrong_text_embeds`` [B, D], and
            ``labels`` [B] for the auxiliary class loss (and, if given, the contrastive term's same-class pairs).
        objective: the terms to optimise.
        rng: a CPU ``torch.Generator``; all the step's randomness (noise, conditioning augmentation's ε,
            DiffAugment) is drawn from it, so a saved generator state resumes the run exactly.
        joint_image_encoder: frozen θ, needed for ``objective.matching_loss_weight``.
        update_generator: ``False`` makes it a discriminator-only step (no ``loss_g`` in the result): the fakes are
            drawn without a graph and G is not updated, as when a fresh D is warmed up on a trained G.
    """
    real, right, wrong = batch["pixel_values"], batch["text_embeds"], batch["wrong_text_embeds"]
    batch_size, device = real.shape[0], real.device
    model = accelerator.unwrap_model(generator)

    # The generator's inputs: B captions for GAN-CLS; for GAN-INT, M = max(1, round(int_fraction·B)) mixtures of
    # the first M captions with other captions of the batch; for mode seeking, second images with other noise of
    # the first B/2 captions, or of the first B/2 − P captions and the first P = min(⌊B/4⌋, M) mixtures.
    text_for_g, num_mixtures = right, 0
    if objective.gan_int:
        num_mixtures = max(1, round(objective.int_fraction * batch_size))
        # Weights for all B rows, then the first M: the random stream stays that of int_fraction = 1.
        if objective.int_beta is None:
            weights = flat_dirichlet(batch_size, objective.int_captions, rng)
        else:
            weights = torch.tensor([[objective.int_beta, 1.0 - objective.int_beta]]).expand(batch_size, 2)
        text_for_g = torch.cat([right, mix_text_embeddings(right, weights.to(device))[:num_mixtures]])
    num_counterfactual = 0
    if objective.counterfactual_fakes > 0:
        if "counterfactual_text_embeds" not in batch:
            raise ValueError("counterfactual_fakes needs the batch's counterfactual_text_embeds and counterfactual_valid "
                             "(TensorBatchLoader(counterfactual_texts=True))")
        num_counterfactual = max(1, round(objective.counterfactual_fakes * batch_size))
        counterfactual_valid = batch["counterfactual_valid"][:num_counterfactual]
        # A row without a counterfactual (or with a fragment for its right text) draws its caption again: fixed shapes.
        counterfactual = torch.where(counterfactual_valid[:, None], batch["counterfactual_text_embeds"][:num_counterfactual],
                                     right[:num_counterfactual])
        text_for_g = torch.cat([text_for_g, counterfactual])
    num_judged = text_for_g.shape[0]  # the fakes D scores in the generator update
    half = batch_size // 2
    paired = torch.arange(half, device=device)  # rows of text_for_g that get a second image
    if objective.mode_seeking_mixtures:
        on_mixtures = min(half // 2, num_mixtures)
        paired = torch.cat([paired[: half - on_mixtures], batch_size + paired[:on_mixtures]])
    if objective.mode_seeking_weight > 0:
        text_for_g = torch.cat([text_for_g, text_for_g[paired]])
    noise = torch.randn(text_for_g.shape[0], model.config.noise_dim, generator=rng).to(device)
    code_noise = None
    if model.config.conditioning_augmentation:
        code_noise = torch.randn(num_judged, model.config.text_proj_dim, generator=rng).to(device)
        if objective.mode_seeking_weight > 0:  # the second images share their caption's ε: they differ by z alone
            code_noise = torch.cat([code_noise, code_noise[paired]])

    def augment(images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, objective.diff_augment, rng) if objective.diff_augment else images

    with accelerator.autocast(), torch.set_grad_enabled(update_generator):
        fake = generator(noise, text_for_g, code_noise)

    # Discriminator: (real, right) → real; (real, wrong) and (fake, right) → fake.
    real_seen = augment(real)
    if objective.ma_gp:
        real_seen, right = real_seen.detach().requires_grad_(True), right.detach().requires_grad_(True)
    with accelerator.autocast():
        real_out = discriminator(real_seen, torch.cat([right, wrong]))
        fake_out = discriminator(augment(fake[:batch_size].detach()), right.detach())
        real_right, real_wrong = real_out.logits.float().split(batch_size)
        loss_d = discriminator_adversarial_loss(real_right, real_wrong, fake_out.logits.float(), objective.loss, objective.label_smoothing)
        if objective.ma_gp:
            loss_d = loss_d + matching_aware_gradient_penalty(real_right, real_seen, right)
        if objective.unconditional_weight > 0:
            loss_d = loss_d + objective.unconditional_weight * unconditional_discriminator_loss(
                real_out.unconditional_logits.float(), fake_out.unconditional_logits.float(), objective.loss
            )
        if objective.contrastive_weight > 0:
            if real_out.image_embeds is None:
                raise ValueError("contrastive_weight needs a projection discriminator (conditioning='projection')")
            same_pair = (right[:, None] == right[None]).all(dim=-1)  # repeated texts: fragments such as "this flower"
            if "labels" in batch:
                same_pair |= batch["labels"][:, None] == batch["labels"][None]
            wrong_is_right = (wrong == right).all(dim=-1) if objective.contrastive_hard_negatives else None
            hard_negatives = real_out.text_features[batch_size:].float() if objective.contrastive_hard_negatives else None
            loss_d = loss_d + objective.contrastive_weight * contrastive_matching_loss(
                real_out.image_embeds.float(), real_out.text_features[:batch_size].float(), same_pair, hard_negatives, wrong_is_right)
        if objective.aux_class_weight > 0:
            class_loss_d = auxiliary_class_loss(real_out.class_logits.float(), batch["labels"])
            class_loss_d = class_loss_d + auxiliary_class_loss(fake_out.class_logits.float(), batch["labels"])
            loss_d = loss_d + objective.aux_class_weight * class_loss_d
    optimizer_d.zero_grad(set_to_none=True)
    accelerator.backward(loss_d)
    optimizer_d.step()
    d_stats = {
        "loss_d": loss_d.detach().item(),
        "d_real_right": torch.sigmoid(real_right.detach()).mean().item(),
        "d_real_wrong": torch.sigmoid(real_wrong.detach()).mean().item(),
        "d_fake": torch.sigmoid(fake_out.logits.detach()).mean().item(),
    }
    if not update_generator:
        return d_stats

    # Generator: fool the updated D with (fake, right text), for GAN-INT (fake, interpolated text), and for
    # counterfactual fakes (fake, counterfactual text).
    g_hard_negatives = objective.contrastive_weight > 0 and objective.contrastive_generator and objective.contrastive_hard_negatives
    g_text = text_for_g[:num_judged].detach()
    if g_hard_negatives:  # a second text per judged fake: the wrong ones for the captions' fakes, the mixtures' own
        # (unused), and for a counterfactual's fake the caption it was made from, now false of it
        g_text = torch.cat([g_text, wrong, g_text[batch_size : batch_size + num_mixtures], right[:num_counterfactual].detach()])
    with accelerator.autocast():
        g_out = discriminator(augment(fake[:num_judged]), g_text)
        # Reed's generator loss weighs the GAN-CLS and the GAN-INT terms equally, however many mixtures there are;
        # the counterfactuals' fakes are a third group of the same weight.
        logits = g_out.logits.float()[:num_judged]
        groups = [logits[:batch_size], logits[batch_size : batch_size + num_mixtures], logits[batch_size + num_mixtures :]]
        terms = [generator_adversarial_loss(group, objective.loss) for group in groups if len(group)]
        loss_g = sum(terms) / len(terms)
        if objective.unconditional_weight > 0:  # every fake, the GAN-INT mixtures' too, must look real
            loss_g = loss_g + objective.unconditional_weight * generator_adversarial_loss(g_out.unconditional_logits.float(), objective.loss)
        if objective.feature_matching_weight > 0:
            fake_features = g_out.image_features[:batch_size].float()
            loss_g = loss_g + objective.feature_matching_weight * feature_matching_loss(real_out.image_features.float(), fake_features)
        if objective.aux_class_weight > 0:
            loss_g = loss_g + objective.aux_class_weight * auxiliary_class_loss(g_out.class_logits[:batch_size].float(), batch["labels"])
        if objective.contrastive_weight > 0 and objective.contrastive_generator:
            hard_negatives = g_out.text_features[num_judged : num_judged + batch_size].float() if g_hard_negatives else None
            loss_g = loss_g + objective.contrastive_weight * contrastive_matching_loss(
                g_out.image_embeds[:batch_size].float(), g_out.text_features[:batch_size].float(), same_pair,
                hard_negatives, wrong_is_right)
            if num_counterfactual:
                rows = slice(num_judged - num_counterfactual, num_judged)
                same_counterfactual = (counterfactual[:, None] == counterfactual[None]).all(dim=-1)
                source = g_out.text_features[2 * num_judged - num_counterfactual :].float() if g_hard_negatives else None
                loss_g = loss_g + objective.contrastive_weight * contrastive_matching_loss(
                    g_out.image_embeds[rows].float(), g_out.text_features[rows].float(), same_counterfactual, source,
                    ~counterfactual_valid)
        if objective.matching_loss_weight > 0:
            image_embeds = joint_image_encoder(fake[:batch_size]).float()
            # θ matches images with Reed's sentence embedding: with text attention, the mean of the position states.
            sentence = sentence_embeds(right, model.config.text_positions)
            loss_g = loss_g + objective.matching_loss_weight * text_image_matching_loss(image_embeds, sentence.float())
        if objective.mode_seeking_weight > 0:
            loss_g = loss_g + objective.mode_seeking_weight * mode_seeking_loss(
                fake[paired].float(), fake[num_judged:].float(), noise[paired], noise[num_judged:], scale=objective.mode_seeking_scale
            )
        if objective.kl_weight > 0 and model.config.conditioning_augmentation:
            # The moments are recomputed for the right captions alone (one small linear layer): the KL term is
            # StackGAN's, on the training captions' distributions.
            _, mean, log_variance = model.text_code(right)
            loss_g = loss_g + objective.kl_weight * conditioning_augmentation_kl(mean.float(), log_variance.float())
    optimizer_g.zero_grad(set_to_none=True)
    optimizer_d.zero_grad(set_to_none=True)
    accelerator.backward(loss_g)
    optimizer_g.step()

    return {**d_stats, "loss_g": loss_g.detach().item()}


@torch.no_grad()
def non_finite(losses: dict[str, float], modules: dict[str, torch.nn.Module] | None = None,
               optimizers: dict[str, torch.optim.Optimizer] | None = None) -> str | None:
    """What made a run diverge, named: the first of ``losses`` (as `train_step` returns them), then of the
    parameters and buffers of ``modules`` ({name: module}), then of the state of ``optimizers`` ({name:
    optimizer}), that is NaN or ±inf ("loss_d = nan", "discriminator parameter conv.0.weight", "generator
    optimizer exp_avg_sq of fc.weight"); ``None`` when all are finite.

    Losses are checked first because they are free (already floats); weights need one pass over them, and catch
    the step whose update overflowed while its loss, computed before the update, was still finite. The optimizer
    state catches what the weights do not show: a gradient above ~1e19 makes Adam's second moment inf in fp32,
    and its update m / √v is then 0, so the weights stay finite and stop learning for good.
    """
    for name, value in losses.items():
        if not math.isfinite(value):
            return f"{name} = {value}"
    for module_name, module in (modules or {}).items():
        for kind, named in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
            for name, tensor in named:
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return f"{module_name} {kind} {name}"
    for optimizer_name, optimizer in (optimizers or {}).items():
        names = {id(p): n for module in (modules or {}).values() for n, p in module.named_parameters()}
        for group in optimizer.param_groups:
            for index, parameter in enumerate(group["params"]):
                for key, tensor in optimizer.state.get(parameter, {}).items():
                    if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                        return f"{optimizer_name} optimizer {key} of {names.get(id(parameter), f'parameter {index}')}"
    return None


@torch.no_grad()
def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for parameters; buffers (BatchNorm statistics) are copied."""
    for ema_param, param in zip(ema_model.parameters(), model.parameters()):
        ema_param.lerp_(param, 1.0 - decay)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)
