"""GAN-CLS / GAN-INT objectives (Reed et al., ICML 2016) and the optional improvements peers use.

The discriminator sees three kinds of pairs (Reed, Algorithm 1):
    s_r = D(real image, right text)   → "real"
    s_w = D(real image, wrong text)   → "fake"   (teaches D to check the text, not only realism)
    s_f = D(fake image, right text)   → "fake"
and L_D = L_real(s_r) + (L_fake(s_w) + L_fake(s_f)) / 2. GAN-INT adds generator terms on images generated from
interpolated text embeddings β·e₁ + (1 − β)·e₂, which D never sees as training pairs, so G must make the space
between captions produce plausible, matching images too.
"""

import torch
import torch.nn.functional as F

LOSS_TYPES = ("bce", "hinge")


def discriminator_adversarial_loss(
    real_right: torch.Tensor,
    real_wrong: torch.Tensor,
    fake_right: torch.Tensor,
    loss_type: str = "bce",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Matching-aware D loss on the logits of the three pairs; the two "fake" terms are averaged as in the paper.

    ``label_smoothing`` is one-sided (Salimans et al., 2016): the real target becomes 1 − smoothing, fake stays 0.
    """
    if loss_type == "bce":
        real = F.binary_cross_entropy_with_logits(real_right, torch.full_like(real_right, 1.0 - label_smoothing))
        wrong = F.binary_cross_entropy_with_logits(real_wrong, torch.zeros_like(real_wrong))
        fake = F.binary_cross_entropy_with_logits(fake_right, torch.zeros_like(fake_right))
    elif loss_type == "hinge":  # DF-GAN's matching-aware hinge loss
        real = F.relu(1.0 - real_right).mean()
        wrong = F.relu(1.0 + real_wrong).mean()
        fake = F.relu(1.0 + fake_right).mean()
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return real + (wrong + fake) / 2


def generator_adversarial_loss(fake_logits: torch.Tensor, loss_type: str = "bce") -> torch.Tensor:
    """G loss on D's logits for generated pairs: non-saturating −log D for BCE, −D for hinge."""
    if loss_type == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if loss_type == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def interpolate_text_embeddings(text_embeds: torch.Tensor, other_text_embeds: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """GAN-INT: β·e₁ + (1 − β)·e₂ (Reed et al. use β = 0.5)."""
    return beta * text_embeds + (1.0 - beta) * other_text_embeds


def mix_text_embeddings(text_embeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """GAN-INT generalised to convex mixtures: row i is Σ_k weights[i, k] · text_embeds[i − k] (the batch rolled by
    k), i.e. caption i mixed with the K − 1 captions before it. Inputs [B, D] and [B, K] (rows summing to 1);
    returns [B, D]. K = 2 with rows (β, 1 − β) is Reed's ``interpolate_text_embeddings(e, e.roll(1, 0), β)``.

    Short prompts ("a rose", "purple") embed near the centroid of the captions, where two-caption midpoints
    rarely go; mixtures of several captions at random weights reach that interior of the caption set.
    """
    if weights.ndim != 2 or weights.shape[0] != text_embeds.shape[0]:
        raise ValueError(f"weights must be [B, K] for {text_embeds.shape[0]} embeddings, got {list(weights.shape)}")
    mixed = torch.zeros_like(text_embeds)
    for k in range(weights.shape[1]):
        mixed = mixed + weights[:, k : k + 1].to(text_embeds.dtype) * text_embeds.roll(k, dims=0)
    return mixed


def flat_dirichlet(num_rows: int, num_weights: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[num_rows, num_weights] samples of the flat Dirichlet (uniform on the simplex): normalised Exp(1) draws.
    With two weights, (β, 1 − β) with β ~ U(0, 1)."""
    exponential = -torch.rand(num_rows, num_weights, generator=generator).clamp_min(1e-12).log()
    return exponential / exponential.sum(dim=1, keepdim=True)


def unconditional_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, loss_type: str = "bce") -> torch.Tensor:
    """The text-free half of StackGAN++'s joint conditional-unconditional loss (Zhang et al., TPAMI 2018): real
    images → real, generated → fake, whatever their text. Logits [B] each (``DiscriminatorOutput.unconditional_logits``).

    GAN-CLS only asks whether an image is real *and* matches its text. For a text code away from every caption
    (a mixture, a short prompt) no image matches well, and a generator can drift to the background; the
    unconditional term keeps asking for a realistic flower there too.
    """
    if loss_type == "bce":
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if loss_type == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def matching_aware_gradient_penalty(
    real_logits: torch.Tensor,
    real_images: torch.Tensor,
    text_embeds: torch.Tensor,
    weight: float = 2.0,
    power: float = 6.0,
) -> torch.Tensor:
    """DF-GAN's MA-GP (Tao et al., CVPR 2022): k·E[‖∇_(x, e) D(x, e)‖^p] on real, matching pairs (k = 2, p = 6).

    ``real_logits`` must come from ``real_images`` and ``text_embeds`` with ``requires_grad=True``: the penalty
    reuses the discriminator pass of the loss. Smoothing D around real-and-matching points, in image and text
    alike, gives the generator useful gradients.
    """
    grad_images, grad_text = torch.autograd.grad(real_logits.sum(), (real_images, text_embeds), create_graph=True)
    grad = torch.cat([grad_images.flatten(1), grad_text.flatten(1)], dim=1)
    return weight * grad.norm(2, dim=1).pow(power).mean()


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Salimans et al. (2016): match the batch mean of D's image features, ‖E f(x) − E f(G(z))‖²."""
    return (real_features.detach().mean(0) - fake_features.mean(0)).pow(2).sum()


def mode_seeking_loss(images_a: torch.Tensor, images_b: torch.Tensor, noise_a: torch.Tensor, noise_b: torch.Tensor,
                      eps: float = 1e-5, scale: int = 1) -> torch.Tensor:
    """MSGAN (Mao et al., CVPR 2019): 1 / (d(G(z₁, t), G(z₂, t)) / d(z₁, z₂) + ε), row i of both halves sharing a text t.

    images_a, images_b: [N, C, H, W]; noise_a, noise_b: [N, Z]. Returns a scalar ≥ 0 (at most 1/ε).

    A strongly conditioned generator can map each caption to a single image and ignore the noise (conditional mode
    collapse); minimising this pushes images of one caption apart in proportion to their noise. d is the mean
    absolute difference, per pair, as in the paper, of the images average-pooled by ``scale`` (1: the pixels):
    pixel differences are cheapest to make as high-frequency speckle, while pooled ones must move whole regions.
    A pooled distance is never larger than the pixel one, so at one weight the pooled term is also the stronger.

    Raises:
        ValueError: ``scale`` < 1, or not a divisor of H and W.
    """
    if scale < 1 or images_a.shape[-1] % scale or images_a.shape[-2] % scale:
        raise ValueError(f"scale must be ≥ 1 and divide the image size {tuple(images_a.shape[-2:])}, got {scale}")
    if scale > 1:
        images_a, images_b = F.avg_pool2d(images_a, scale), F.avg_pool2d(images_b, scale)
    image_distance = (images_a - images_b).abs().flatten(1).mean(dim=1)
    noise_distance = (noise_a - noise_b).abs().mean(dim=1)
    return 1.0 / ((image_distance / noise_distance).mean() + eps)


def text_image_matching_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """AttnGAN's sentence-level DAMSM loss (Xu et al., CVPR 2018) with a frozen joint embedding: row i of
    `image_embeds` (θ of a generated image) and of `text_embeds` (φ of its caption) should be each other's best match
    in the batch. Symmetric cross-entropy over cosine similarities scaled by `temperature` (AttnGAN's γ₃ = 10).

    It hands the generator a direct, dense gradient towards images that match their text, where the adversarial
    term only says real-and-matching or not.
    """
    logits = temperature * F.normalize(image_embeds, dim=1) @ F.normalize(text_embeds, dim=1).T
    return _symmetric_batch_cross_entropy(logits)


def contrastive_matching_loss(image_embeds: torch.Tensor, text_features: torch.Tensor,
                              same_pair: torch.Tensor | None = None,
                              hard_negative_features: torch.Tensor | None = None,
                              hard_negative_true: torch.Tensor | None = None) -> torch.Tensor:
    """XMC-GAN's image–sentence contrastive loss (Zhang et al., CVPR 2021), scored by the projection
    discriminator's own matching term: logits[i, j] = image_embeds[i] · text_features[j] (both [B, F], from
    `DiscriminatorOutput`) is D's logit for image i with caption j, less the text-free term that is the same for
    every caption. Image i must pick caption i among the B captions of the batch, and caption i image i among the
    B images (symmetric cross-entropy, ≥ 0).

    GAN-CLS shows D one wrong caption per image, and a random one mostly differs in petal colour, the easiest
    attribute; here every image is told apart from B − 1 captions at once, many of which share its petal colour
    and differ only in the centre, the count or the shape. For D on real images it trains the text check; for G
    on its fakes it asks each image to be the one its caption picks.

    same_pair: [B, B] bool, True where caption j is as true of image i as caption i (same class, identical text):
        such pairs are no negatives and are left out of both softmaxes (the diagonal is always kept).
    hard_negative_features: [B, F], row i a caption false of image i (its counterfactual: the caption with one
        word swapped, `t2i.data.counterfactual`), added as one more candidate to image i's choice only, as
        NegCLIP adds swapped-word captions to CLIP's batch (Yuksekgonul et al., ICLR 2023). Captions of other
        images rarely differ from image i's in one value alone; this one does, so picking the right caption
        needs each stated value bound to its part (white petals around a yellow centre, not yellow petals).
    hard_negative_true: [B] bool, True where row i's hard negative is no negative (the same text as caption i):
        left out.
    """
    logits = image_embeds @ text_features.T
    if same_pair is not None:
        off_diagonal = ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same_pair & off_diagonal, float("-inf"))
    extra = None
    if hard_negative_features is not None:
        extra = (image_embeds * hard_negative_features).sum(dim=1, keepdim=True)
        if hard_negative_true is not None:
            extra = extra.masked_fill(hard_negative_true[:, None], float("-inf"))
    return _symmetric_batch_cross_entropy(logits, extra)


def _symmetric_batch_cross_entropy(logits: torch.Tensor, extra_columns: torch.Tensor | None = None) -> torch.Tensor:
    """Row i of the square `logits` should pick column i, and column i row i (CLIP's symmetric InfoNCE);
    `extra_columns` [B, K] are more candidates for the rows' choice alone."""
    targets = torch.arange(len(logits), device=logits.device)
    rows = logits if extra_columns is None else torch.cat([logits, extra_columns], dim=1)
    return (F.cross_entropy(rows, targets) + F.cross_entropy(logits.T, targets)) / 2


def auxiliary_class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TAC-GAN / AC-GAN: cross-entropy of D's class head, for real images (D) and generated ones (D and G)."""
    return F.cross_entropy(class_logits, labels)


def conditioning_augmentation_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """StackGAN's regulariser (Zhang et al., ICCV 2017): KL(N(μ, diag σ²) ‖ N(0, I)) per code dimension,
    ½ (μ² + σ² − 1 − log σ²), averaged over the batch and the C dimensions as in StackGAN's code (so its
    coefficient 2 carries over). Inputs [B, C]; 0 exactly when μ = 0 and σ = 1, otherwise > 0.

    It keeps each caption's code distribution wide and centred, so nearby captions, interpolations and short
    prompts map into a region the generator was trained on.
    """
    return 0.5 * (mean.square() + log_variance.exp() - 1.0 - log_variance).mean()
