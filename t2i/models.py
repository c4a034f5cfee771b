"""GAN-CLS generator and matching-aware discriminator (Reed et al., ICML 2016), as diffusers models.

Two generator designs share one class, chosen by config (``fusion``):

- ``"input"`` (Reed 2016): the projected text is concatenated with the noise once, at the input, and four
  transposed convolutions up-sample it;
- ``"affine"`` (model v3): every up-block is nearest up-sampling and a 3×3 convolution (no transposed
  convolutions, so no checkerboard: Odena et al., 2016), followed by BatchNorm without its own scale and shift
  and a per-channel scale and shift predicted from [noise; text code] (conditional BatchNorm, as in DF-GAN's
  deep fusion, Tao et al., CVPR 2022). Text reaches every resolution, so centre colour and petal count do not
  have to survive four layers that never see it.

The affine generator can also see where it draws: ``polar_harmonics`` K > 0 feeds every up-block's convolution
CoordConv-style position channels (Liu et al., NeurIPS 2018) in polar form around the image centre, the radius r
and cos kθ, sin kθ for k = 1..K. A flower is a radial object: a centre disc is "r below some radius" and n petals
are a harmonic of order n in θ, which plain 3×3 convolutions must otherwise build from image content alone.

Either can put StackGAN's conditioning augmentation (Zhang et al., ICCV 2017) in front: the text code is drawn
from N(μ(e), diag σ(e)²) and a KL term keeps that distribution near N(0, I), so the generator is trained on a
neighbourhood of every caption rather than on isolated points.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .hub import SafetensorsOnlyMixin


def _num_up_blocks(resolution: int) -> int:
    if resolution not in (64, 128):
        raise ValueError(f"resolution must be 64 or 128, got {resolution}")
    return int(math.log2(resolution)) - 2  # DCGAN stacks start from a 4x4 map


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) for conv/linear weights, N(1, 0.02) for BatchNorm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def standing_batch_norm_(module: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> None:
    """Replace every BatchNorm's running statistics in ``module`` by exact averages over ``module(*batch)`` for each
    batch ("standing statistics", Brock et al., 2019), then leave ``module`` in eval mode.

    Running averages belong to the weights they were collected with: an EMA generator's averaged weights, or an
    encoder's final weights after fast training, need statistics of their own.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    module.train()
    for batch in batches:
        module(*batch)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    module.eval()


FUSIONS = ("input", "affine")


def _text_projection(text_embed_dim: int, text_proj_dim: int, batch_norm: bool) -> nn.Sequential:
    # Reed et al. compress the sentence embedding before it meets image features in both G and D.
    layers: list[nn.Module] = [nn.Linear(text_embed_dim, text_proj_dim)]
    if batch_norm:
        # Sentence embeddings are small (norm ≈ 1 for MiniLM and our char-CNN-RNN), so after DCGAN's N(0, 0.02)
        # init the projected text starts tens of times weaker than the noise, and both networks learn to ignore it.
        # BatchNorm puts it on the scale of the noise and the image features from the first step.
        layers.append(nn.BatchNorm1d(text_proj_dim))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2, inplace=True))


class TextAttentionPooling(nn.Module):
    """Per-position text features → ``heads`` attention-pooled vectors: [B, positions · D] → [B, heads · D].

    The input is a char-CNN-RNN's embedding with ``pooling="positions"`` (its T position states, concatenated).
    Each head is a learned query over the positions (a softmax of a linear score of each position's state), so a
    head can read the words of one part where the mean of the positions mixes every part's colour: on unseen
    captions an attention-pooling probe reads petal colour at 0.99 and secondary colour at 0.84 off these states,
    a linear probe of their mean at 0.935 and 0.49 (docs/results.md, round 14). Word-level attention in the manner
    of AttnGAN (Xu et al., CVPR 2018), with queries learnt per head instead of computed from image regions. The
    scores start at zero, so every head starts as the mean of the positions, Reed's sentence embedding.
    """

    def __init__(self, positions: int, dim: int, heads: int):
        super().__init__()
        self.positions = positions
        self.scores = nn.Linear(dim, heads)
        nn.init.zeros_(self.scores.weight)
        nn.init.zeros_(self.scores.bias)

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        tokens = text_embeds.unflatten(1, (self.positions, -1))  # [B, T, D]
        weights = self.scores(tokens).softmax(dim=1)  # [B, T, heads]
        return torch.einsum("bth,btd->bhd", weights, tokens).flatten(1)


def _text_attention(text_embed_dim: int, positions: int, heads: int) -> TextAttentionPooling | None:
    """The attention pooling that ``text_attention_heads`` asks for, or None for 0 (Reed's pooled embedding)."""
    if heads < 0 or (heads and (positions < 2 or text_embed_dim % positions)):
        raise ValueError(f"text_attention_heads must be ≥ 0, and > 0 only with text_positions ≥ 2 dividing text_embed_dim "
                         f"(a char-CNN-RNN with pooling='positions'); got {heads} heads, {positions} positions, "
                         f"text_embed_dim {text_embed_dim}")
    return TextAttentionPooling(positions, text_embed_dim // positions, heads) if heads else None


def _pooled_dim(text_embed_dim: int, positions: int, heads: int) -> int:
    return text_embed_dim // positions * heads if heads else text_embed_dim


class ConditioningAugmentation(nn.Module):
    """StackGAN's conditioning augmentation (Zhang et al., ICCV 2017): e → (μ, log σ²) → c = μ + σ·ε.

    ``forward(text_embeds [B, D], noise [B, C] or None)`` returns (c [B, C], μ, log σ²). With ``noise=None`` it
    returns c = μ, the distribution's mean (used for sampling, so an image depends only on its seed and text).
    """

    def __init__(self, text_embed_dim: int, code_dim: int):
        super().__init__()
        self.to_moments = nn.Linear(text_embed_dim, 2 * code_dim)

    def forward(self, text_embeds: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_variance = self.to_moments(text_embeds).chunk(2, dim=1)
        log_variance = log_variance.clamp(-10, 10)  # keeps exp() finite in bf16 and early training
        code = mean if noise is None else mean + (0.5 * log_variance).exp() * noise.to(mean.dtype)
        return code, mean, log_variance


def polar_coordinates(size: int, harmonics: int, device=None, dtype=None, antialias: bool = False) -> torch.Tensor:
    """Position channels [1 + 2·harmonics, size, size] around the centre of a size × size map: the radius r
    (0 at the centre, 1 at the middle of an edge) and cos kθ, sin kθ for k = 1..harmonics, all in [-1, √2].

    Near the centre cos kθ turns faster than the pixel grid can show: at ρ pixels from it one period spans 2πρ/k
    pixels, under 2 (Nyquist) for ρ < k/π, so sin 6θ reads ±1 on the four pixels around the centre of a
    64 × 64 map and the generator draws a star of spokes there. ``antialias`` fades harmonic k in with the window
    1 − exp(−(πρ / 2k)²): 0.22 where its period is 2 pixels, 0.63 where it is 4, above 0.99 from ρ = 1.4k pixels on.
    It is measured on each map's own grid, so on an 8 × 8 map the harmonics above k = 3 stay damped everywhere.
    """
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    angle, radius = torch.atan2(y, x), torch.sqrt(x**2 + y**2)
    channels = [radius]
    for k in range(1, harmonics + 1):
        window = -torch.expm1(-(math.pi * radius * size / 2 / (2 * k)) ** 2) if antialias else 1.0
        channels += [window * torch.cos(k * angle), window * torch.sin(k * angle)]
    return torch.stack(channels).to(dtype)


class TextAffineUpBlock(nn.Module):
    """×2 nearest up-sampling, 3×3 convolution, BatchNorm, then (1 + γ(c))·h + β(c) and ReLU.

    γ and β are per-channel and linear in the condition c ([noise; text code]); they start at zero, so a new block
    is a plain up-sampling convolution and learns how much to follow the text. With ``polar_harmonics`` K > 0 the
    convolution also reads ``polar_coordinates(K)`` of the up-sampled map, as 1 + 2K more input channels would.
    A 3×3 convolution of [h; p] is conv(h) + conv'(p), and conv'(p) is the same for every image, so it is computed
    once per call on a single map and broadcast: concatenating the channels doubled the generator's step time.

    With ``transposed`` the up-sampling and convolution are one 4×4 stride-2 transposed convolution (DCGAN's,
    Radford et al., 2016): 4 instead of 9 multiply-adds per output pixel and channel pair, and no interpolated map
    (the step gets only 10–17 % faster: at small widths element-wise work dominates it). Odena et al. (2016) trace checkerboard artefacts to this
    layer's uneven overlap; the nearest + 3×3 default avoids them by construction.

    With ``residual`` a second fused convolution refines the block's output at the same resolution, as a residual
    branch with a learnt gain α that starts at zero (ReZero, Bachlechner et al., 2020; DF-GAN's up-blocks carry the
    same γ): h + α·ReLU(affine₂(BN(conv₂(h)))). It doubles the depth and the text affines per resolution, and a
    generator grown this way from a trained one draws exactly what that one drew until α moves (`grow_from_`).
    """

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int, polar_harmonics: int = 0,
                 polar_antialias: bool = False, residual: bool = False, transposed: bool = False):
        super().__init__()
        self.polar_harmonics, self.polar_antialias, self.residual = polar_harmonics, polar_antialias, residual
        self.transposed = transposed
        self.conv = (nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False) if transposed
                     else nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False))
        if polar_harmonics:
            self.position_conv = nn.Conv2d(1 + 2 * polar_harmonics, out_channels, 3, 1, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels, affine=False)
        self.affine = nn.Linear(condition_dim, 2 * out_channels)
        if residual:
            self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(out_channels, affine=False)
            self.affine2 = nn.Linear(condition_dim, 2 * out_channels)
            self.residual_gain = nn.Parameter(torch.zeros(()))

    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """hidden [B, C_in, H, W] and condition [B, condition_dim] → [B, C_out, 2H, 2W]."""
        hidden = self.conv(hidden if self.transposed else nn.functional.interpolate(hidden, scale_factor=2.0, mode="nearest"))
        if self.polar_harmonics:
            position = polar_coordinates(hidden.shape[-1], self.polar_harmonics, hidden.device, self.position_conv.weight.dtype,
                                         self.polar_antialias)
            term = self.position_conv(position[None]).to(hidden.dtype)
            if hidden.is_contiguous(memory_format=torch.channels_last):  # a mixed-layout add is 4× slower
                term = term.contiguous(memory_format=torch.channels_last)
            hidden = hidden + term
        hidden = torch.relu(_text_affine(self.norm(hidden), self.affine(condition)))
        if self.residual:
            refinement = torch.relu(_text_affine(self.norm2(self.conv2(hidden)), self.affine2(condition)))
            hidden = hidden + self.residual_gain.to(hidden.dtype) * refinement
        return hidden


MAX_REGIONS = 16
"""The most soft masks or palette regions a generator may have (``fusion_masks``, ``output_palette``)."""


def check_region_count(name: str, value, allow_off: bool = True) -> int:
    """``value`` if it is a number of soft masks or palette regions: a whole number from 2 to `MAX_REGIONS`, or 0
    (off) where ``allow_off``. One region would be a softmax of one, 1 everywhere: a global term that learns nothing.

    Raises:
        ValueError: anything else (a bool, a float, 1, a negative or too large a number), named by ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not ((allow_off and value == 0) or 2 <= value <= MAX_REGIONS):
        raise ValueError(f"{name} must be a whole number from 2 to {MAX_REGIONS}{' (0 = off)' if allow_off else ''}, got {value!r}")
    return value


def soft_masks(logits: torch.Tensor) -> torch.Tensor:
    """K soft masks from their logits [B, K, H, W]: a softmax over K at every position, so they sum to 1 there."""
    return logits.softmax(dim=1)


def _mask_weighted_sum(masks: torch.Tensor, per_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Σ_k masks[:, k] · per_mask[:, k]: masks [B, K, H, W] and per_mask [B, K, C] → [B, C, H, W], in the dtype and
    memory format of ``like`` (a mixed-layout add is 4× slower)."""
    if like.is_contiguous(memory_format=torch.channels_last):
        return torch.einsum("bkhw,bkc->bhwc", masks, per_mask.to(masks.dtype)).permute(0, 3, 1, 2).to(like.dtype)
    return torch.einsum("bkhw,bkc->bchw", masks, per_mask.to(masks.dtype)).to(like.dtype)


def _text_affine(hidden: torch.Tensor, scale_and_shift: torch.Tensor) -> torch.Tensor:
    """hidden [B, C, H, W] · (1 + scale) + shift, from scale and shift [B, 2C] (per channel) or [B, 2C, H, W]."""
    if scale_and_shift.ndim == 2:
        scale_and_shift = scale_and_shift[:, :, None, None]
    scale, shift = scale_and_shift.chunk(2, dim=1)
    return hidden * (1 + scale) + shift


class GanClsGenerator(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    """Text-conditioned generator: noise [B, noise_dim] and a sentence embedding [B, text_embed_dim] → image.

    ``fusion="input"`` is Reed et al.'s DCGAN generator ([z ; φ(e)] → transposed convolutions), ``"affine"`` puts
    the text into every up-block (see the module docstring). ``conditioning_augmentation`` replaces the text
    projection φ by StackGAN's sampled code; ``normalize_text`` L2-normalises embeddings first, so a short prompt
    (norm ≈ 0.75 with the shipped char-CNN-RNN) and a long caption (≈ 1.0) reach the generator on one scale;
    ``polar_harmonics`` K > 0 (``fusion="affine"`` only) gives every up-block polar position channels, and
    ``polar_antialias`` fades their angle harmonics out where the pixel grid cannot show them (`polar_coordinates`);
    ``residual_blocks`` (``fusion="affine"`` only) adds a residual second fused convolution to every up-block, and
    ``transposed_up_blocks`` (``fusion="affine"`` only) makes each block up-sample by a transposed convolution.
    ``deep_fusion`` (``fusion="input"`` only) keeps Reed's layers and also fuses the text into every one of them:
    after each BatchNorm, (1 + γ(c))·h + β(c) with γ, β linear in c = [noise; text code] and zero at the start (DF-GAN's
    deep fusion, Tao et al., CVPR 2022, on DCGAN's blocks), so a trained Reed generator grows into one
    (`grow_from_`) that draws exactly what it drew.
    ``fusion_masks`` K > 0 (with ``deep_fusion``) makes those affines spatial: after each BatchNorm a 1×1
    convolution of the feature map predicts K soft masks (a softmax over K at every position), and mask k carries
    its own text affine γ_k(c), β_k(c), added to the global one where the mask is on: h·(1 + γ(c) + Σ_k m_k γ_k(c))
    + β(c) + Σ_k m_k β_k(c). A per-channel affine tints every position alike, so a caption's petal and centre
    colours must be told apart by the layers after it; with masks each region can take its own colour from the
    text (the semantic-spatial aware blocks of SSA-GAN, Liao et al., CVPR 2022, with K masks instead of one). The
    mask affines start at zero, so a deep-fusion generator grows into one (`grow_from_`) that draws what it drew.
    ``output_palette`` K > 0 (``fusion="input"`` only) paints the output: the last layer also predicts K soft
    regions (a softmax over K at every pixel), and each region k adds a colour p_k(c), linear in c, to the RGB the
    convolution draws before the tanh: tanh(rgb + Σ_k m_k p_k(c)). The text then sets each region's colour through
    a linear map, which holds for combinations of colours the training captions never paired, where colour drawn
    by the convolutions alone is learnt per combination (round 12 in docs/results.md). The colours start at zero,
    so a generator without the palette grows into one (`grow_from_`) that draws what it drew.
    Every config saved before these options existed loads unchanged (the defaults are Reed's design).

    Raises:
        ValueError: an unknown ``fusion``, ``conditioning_augmentation`` with ``text_batch_norm``, ``polar_harmonics``
            < 0 or > 0 without ``fusion="affine"``, ``polar_antialias`` without ``polar_harmonics``, ``residual_blocks`` or ``transposed_up_blocks`` without ``fusion="affine"``,
            ``deep_fusion`` without ``fusion="input"``, ``fusion_masks`` or ``output_palette`` that is not 0 or
            2–`MAX_REGIONS` (`check_region_count`), ``fusion_masks`` without ``deep_fusion``, ``output_palette``
            without ``fusion="input"``, or a resolution other than 64 or 128.
    """

    @register_to_config
    def __init__(
        self,
        text_embed_dim: int = 1024,
        noise_dim: int = 100,
        text_proj_dim: int = 128,
        ngf: int = 64,
        resolution: int = 64,
        out_channels: int = 3,
        text_batch_norm: bool = False,
        fusion: str = "input",
        conditioning_augmentation: bool = False,
        normalize_text: bool = False,
        polar_harmonics: int = 0,
        polar_antialias: bool = False,
        residual_blocks: bool = False,
        transposed_up_blocks: bool = False,
        deep_fusion: bool = False,
        fusion_masks: int = 0,
        output_palette: int = 0,
        text_positions: int = 0,
        text_attention_heads: int = 0,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if polar_harmonics < 0 or (polar_harmonics and fusion != "affine"):
            raise ValueError(f"polar_harmonics must be ≥ 0, and > 0 only with fusion='affine'; got {polar_harmonics} with {fusion!r}")
        if polar_antialias and not polar_harmonics:
            raise ValueError("polar_antialias windows the polar harmonics: it needs polar_harmonics > 0")
        for name, value in (("residual_blocks", residual_blocks), ("transposed_up_blocks", transposed_up_blocks)):
            if value and fusion != "affine":
                raise ValueError(f"{name} shape the text-affine up-blocks: they need fusion='affine', got {fusion!r}")
        if deep_fusion and fusion != "input":
            raise ValueError(f"deep_fusion adds text affines to Reed's layers: it needs fusion='input' (fusion='affine' "
                             f"has them in its own blocks), got {fusion!r}")
        check_region_count("fusion_masks", fusion_masks)
        check_region_count("output_palette", output_palette)
        if fusion_masks and not deep_fusion:
            raise ValueError(f"fusion_masks makes deep fusion's affines spatial: it needs deep_fusion=True, got fusion_masks="
                             f"{fusion_masks} without it")
        if output_palette and fusion != "input":
            raise ValueError(f"output_palette paints the last layer of Reed's generator: it needs fusion='input', got {fusion!r}")
        if conditioning_augmentation and text_batch_norm:
            raise ValueError("conditioning_augmentation replaces the text projection: it cannot have text_batch_norm too")
        num_up = _num_up_blocks(resolution)
        self.text_attention = _text_attention(text_embed_dim, text_positions, text_attention_heads)
        pooled_dim = _pooled_dim(text_embed_dim, text_positions, text_attention_heads)
        if conditioning_augmentation:
            self.ca_net = ConditioningAugmentation(pooled_dim, text_proj_dim)
        else:
            self.text_projection = _text_projection(pooled_dim, text_proj_dim, text_batch_norm)
        width = ngf * 2 ** (num_up - 1)
        # DCGAN's "project and reshape": on a 1×1 input the first 4×4 transposed convolution is a matrix product,
        # and as a Linear layer it runs several times faster on CPU.
        layers: list[nn.Module] = [
            nn.Linear(noise_dim + text_proj_dim, width * 16, bias=False),
            nn.Unflatten(1, (width, 4, 4)),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        if fusion == "input":
            for _ in range(num_up - 1):
                layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
                width //= 2
            layers += [nn.ConvTranspose2d(width, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
            self.net = nn.Sequential(*layers)
            if deep_fusion:  # a module of its own, so Reed's tensors keep their names and a Reed checkpoint loads into it
                norms = [layer.num_features for layer in layers if isinstance(layer, nn.BatchNorm2d)]
                self.fusion_affines = nn.ModuleList(nn.Linear(noise_dim + text_proj_dim, 2 * n) for n in norms)
                if fusion_masks:
                    self.fusion_mask_predictors = nn.ModuleList(nn.Conv2d(n, fusion_masks, 1) for n in norms)
                    self.fusion_mask_affines = nn.ModuleList(nn.Linear(noise_dim + text_proj_dim, 2 * fusion_masks * n) for n in norms)
            if output_palette:  # beside the last transposed convolution, which it mirrors, so Reed's tensors keep their names
                self.palette_masks = nn.ConvTranspose2d(width, output_palette, 4, 2, 1)
                self.palette_colors = nn.Linear(noise_dim + text_proj_dim, output_palette * out_channels)
        else:
            self.stem = nn.Sequential(*layers)
            # Halving per block, the last one (at full resolution) with ngf / 2 channels, never fewer than 8.
            widths = [width] + [max(width // 2**i, 8) for i in range(1, num_up + 1)]
            self.up_blocks = nn.ModuleList(
                TextAffineUpBlock(widths[i], widths[i + 1], noise_dim + text_proj_dim, polar_harmonics, polar_antialias,
                                  residual_blocks, transposed_up_blocks)
                for i in range(num_up)
            )
            self.to_rgb = nn.Sequential(nn.Conv2d(widths[-1], out_channels, 3, 1, 1), nn.Tanh())
        dcgan_init_(self)
        for block in getattr(self, "up_blocks", []):
            for affine in (block.affine, getattr(block, "affine2", None)):
                if affine is not None:
                    nn.init.zeros_(affine.weight)
                    nn.init.zeros_(affine.bias)
        self._zero_text_terms(list(ZERO_AT_START))

    def text_code(self, text_embeds: torch.Tensor, code_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The text code the generator is conditioned on, [B, text_proj_dim], and with conditioning augmentation
        its mean and log-variance (``None`` otherwise). ``code_noise`` [B, text_proj_dim] is CA's ε (mean if None)."""
        if self.config.normalize_text:
            text_embeds = nn.functional.normalize(text_embeds, dim=1)
        if self.text_attention is not None:
            text_embeds = self.text_attention(text_embeds)
        if self.config.conditioning_augmentation:
            return self.ca_net(text_embeds, code_noise)
        return self.text_projection(text_embeds), None, None

    def forward(self, noise: torch.Tensor, text_embeds: torch.Tensor, code_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Map noise [B, noise_dim] and text embeddings [B, text_embed_dim] to images [B, C, R, R] in [-1, 1].

        ``code_noise`` [B, text_proj_dim] is conditioning augmentation's ε, drawn by the caller in training; without
        it the text code is its mean (ignored without conditioning augmentation).
        """
        code, _, _ = self.text_code(text_embeds, code_noise)
        return self.generate_from_code(noise, code)

    def generate_from_code(self, noise: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Images [B, C, R, R] in [-1, 1] from noise [B, noise_dim] and a text code [B, text_proj_dim]."""
        condition = torch.cat([noise, code], dim=1)
        if self.config.fusion == "input":
            if not (self.config.deep_fusion or self.config.output_palette):
                return self.net(condition)
            hidden, fused = condition, 0
            for layer in self.net[:-2]:
                hidden = layer(hidden)
                if self.config.deep_fusion and isinstance(layer, nn.BatchNorm2d):
                    scale_and_shift = self.fusion_affines[fused](condition)
                    if self.config.fusion_masks:
                        scale_and_shift = scale_and_shift[:, :, None, None] + self._masked_affine(hidden, condition, fused)
                    hidden = _text_affine(hidden, scale_and_shift)
                    fused += 1
            rgb = self.net[-2](hidden)
            if self.config.output_palette:
                rgb = rgb + self._palette(hidden, condition, rgb)
            return self.net[-1](rgb)
        hidden = self.stem(condition)
        for block in self.up_blocks:
            hidden = block(hidden, condition)
        return self.to_rgb(hidden)

    def _masked_affine(self, hidden: torch.Tensor, condition: torch.Tensor, index: int) -> torch.Tensor:
        """Σ_k m_k · (γ_k(c), β_k(c)) of fusion layer ``index``: [B, 2C, H, W], in ``hidden``'s memory format."""
        masks = soft_masks(self.fusion_mask_predictors[index](hidden))  # [B, K, H, W]
        batch, channels = hidden.shape[:2]
        per_mask = self.fusion_mask_affines[index](condition).view(batch, self.config.fusion_masks, 2 * channels)
        return _mask_weighted_sum(masks, per_mask, hidden)

    def _palette(self, hidden: torch.Tensor, condition: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """Σ_k m_k · p_k(c) from the last layer's input ``hidden`` [B, C, H, W]: [B, out_channels, 2H, 2W], in the
        dtype and memory format of ``rgb``, the convolution's output it is added to."""
        masks = soft_masks(self.palette_masks(hidden))  # [B, K, 2H, 2W]
        colors = self.palette_colors(condition).view(hidden.shape[0], self.config.output_palette, self.config.out_channels)
        return _mask_weighted_sum(masks, colors, rgb)

    def _zero_text_terms(self, options: list[str]) -> None:
        """Zero the text terms that ``options`` (keys of `ZERO_AT_START`) add, where this generator has them."""
        for option in options:
            modules = getattr(self, ZERO_AT_START[option], None)
            for module in ([] if modules is None else modules if isinstance(modules, nn.ModuleList) else [modules]):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def grow_from_(self, trained: "GanClsGenerator") -> None:
        """Copy a trained generator into this one, which may add ``residual_blocks``, ``deep_fusion``, ``fusion_masks``
        or ``output_palette`` to it: every
        tensor it has is copied, and the added parts keep their fresh weights behind a zero gain or a zero text
        affine, so this generator then draws exactly what ``trained`` draws and training goes on from there (a
        function-preserving expansion, as Net2Net, Chen et al., ICLR 2016). Copying between equal configs is plain
        weight copying.

        Raises:
            ValueError: ``trained`` differs in any other config value, or has residual blocks, deep fusion, fusion
                masks or a palette that this generator lacks (or another number of masks or palette colours).
        """
        mine, theirs = dict(self.config), dict(trained.config)
        differing = sorted(k for k in set(mine) | set(theirs) if not k.startswith("_") and k not in GROWABLE
                           and mine.get(k) != theirs.get(k))
        lost = [k for k in GROWABLE if theirs.get(k) and mine.get(k) != theirs.get(k)]
        if differing or lost:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} (here {mine.get(k)!r})" for k in differing + lost)
            raise ValueError(f"cannot grow this generator from that one: they differ in {detail}")
        state = self.state_dict()
        for name, tensor in trained.state_dict().items():
            state[name].copy_(tensor)
        for block in getattr(self, "up_blocks", []):
            if block.residual and not theirs.get("residual_blocks"):
                block.residual_gain.zero_()
        self._zero_text_terms([k for k in ZERO_AT_START if mine.get(k) and not theirs.get(k)])


GROWABLE = {"residual_blocks": bool, "deep_fusion": bool, "fusion_masks": int, "output_palette": int}
"""Generator options that `GanClsGenerator.grow_from_` can add to a trained generator without changing what it
draws, with their type (a flag, or a count checked by `check_region_count`)."""

ZERO_AT_START = {"deep_fusion": "fusion_affines", "fusion_masks": "fusion_mask_affines", "output_palette": "palette_colors"}
"""The text terms each option adds, zero in a new generator and when grown into a trained one, so that it first
draws what it would without them (residual blocks start behind a zero gain instead)."""


def output_layers(generator: GanClsGenerator) -> tuple[nn.Module, nn.Module]:
    """The generator's first layer that sees the text and its last convolution (for initialising stand-in models)."""
    first = generator.ca_net.to_moments if generator.config.conditioning_augmentation else generator.text_projection[0]
    last = generator.net[-2] if generator.config.fusion == "input" else generator.to_rgb[0]
    return first, last


@dataclass
class DiscriminatorOutput(BaseOutput):
    """What the discriminator computes in one pass.

    Args:
        logits: [k·B] "real and matching" logits, one per (image, caption) pair.
        image_features: [B, C, 4, 4] text-free image features (for feature matching).
        class_logits: [B, num_classes] auxiliary class logits (TAC-GAN), or ``None`` without a class head.
        unconditional_logits: [B] the text-free "real image" logits, one per image: the projection
            discriminator's ψ(φ(x)) term, which ``logits`` contains (``None`` with concatenation).
        image_embeds, text_features: [B, F] and [k·B, F], the two sides of the projection discriminator's
            matching term, concatenated over its scales: image i and caption j match by
            ``image_embeds[i] · text_features[j]``, so one product scores every image against every caption of
            the batch (``None`` with concatenation).
    """

    logits: torch.Tensor
    # Defaults let BaseOutput be rebuilt from a dict, as accelerate's mixed-precision output casting does.
    image_features: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None
    unconditional_logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_features: torch.Tensor | None = None


CONDITIONINGS = ("concat", "projection")


class GanClsDiscriminator(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    """Matching-aware discriminator: scores whether an image is real *and* matches its text.

    Images are encoded by stride-2 convolutions to a 4×4 map. With ``conditioning="concat"`` (Reed) the projected
    text embedding is replicated over that map, concatenated, and a 1×1 then a 4×4 convolution give the logit.
    With ``"projection"`` (Miyato & Koyama, 2018) the logit is a text-free 4×4 convolution of the map plus the
    inner product of the projected text with the map's pooled features, so matching is one direct term.
    ``projection_scales`` > 1 adds the same term on the 8×8 (and 16×16, ...) maps before it: the match is also
    judged where centre colour and petal count are still spatial details, not only on the pooled 4×4 map.
    ``spectral_norm`` replaces the image path's BatchNorm by spectral normalisation of every convolution and
    linear layer (SN-GAN, Miyato et al., ICLR 2018; the projection discriminator's own setting): D's Lipschitz
    constant is bounded per layer, and no batch statistics couple the images of one batch.
    ``first_conv_bias`` gives the first convolution a bias, as the joint embedding's image encoder θ has, so that
    the image path can start as θ (`init_image_encoder_from_`).
    ``projection_regions`` K > 0 (with projection) judges the match part by part: a 1×1 convolution of the 8×8 map
    (the one before 4×4) predicts K soft masks (a softmax over K at every position), the map is pooled under each,
    and each region k has its own projection of the text, ⟨W_k t, Σ_xy m_k(xy) φ(x)_xy⟩. A pooled map holds which
    colours an image has, not where; with regions D can find the disc and the petals and score each one's colour
    against the caption, where "white petals, red centre" and "red petals, white centre" differ (G's fusion masks
    seen from D's side; the region-wise matching of SSA-GAN's and DAE-GAN's discriminators, Liao et al. and Ruan
    et al., 2021-22). The region terms join ``image_embeds`` and ``text_features``, so the contrastive term uses them.

    Raises:
        ValueError: an unknown ``conditioning``; ``projection_scales`` out of [1, number of stride-2 blocks] or > 1
            with concatenation; ``projection_regions`` not 0 or 2–`MAX_REGIONS`, or > 0 with concatenation.
    """

    @register_to_config
    def __init__(
        self,
        text_embed_dim: int = 1024,
        text_proj_dim: int = 128,
        ndf: int = 64,
        resolution: int = 64,
        in_channels: int = 3,
        num_classes: int = 0,
        text_batch_norm: bool = False,
        conditioning: str = "concat",
        projection_scales: int = 1,
        spectral_norm: bool = False,
        first_conv_bias: bool = False,
        text_positions: int = 0,
        text_attention_heads: int = 0,
        projection_regions: int = 0,
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        num_down = _num_up_blocks(resolution)
        if not 1 <= projection_scales <= num_down or (projection_scales > 1 and conditioning != "projection"):
            raise ValueError(f"projection_scales must be in [1, {num_down}], and > 1 only with conditioning='projection'; "
                             f"got {projection_scales} with {conditioning!r}")
        if check_region_count("projection_regions", projection_regions) and conditioning != "projection":
            raise ValueError(f"projection_regions needs conditioning='projection', got {conditioning!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=first_conv_bias), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        image_norm = (lambda channels: nn.Identity()) if spectral_norm else nn.BatchNorm2d
        for _ in range(num_down - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), image_norm(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        self.image_encoder = nn.Sequential(*layers)
        # D reads the words with attention of its own, so that it can check each part's colour as G must draw it.
        self.text_attention = _text_attention(text_embed_dim, text_positions, text_attention_heads)
        self.text_projection = _text_projection(_pooled_dim(text_embed_dim, text_positions, text_attention_heads), text_proj_dim, text_batch_norm)
        if conditioning == "concat":
            self.joint = nn.Sequential(
                nn.Conv2d(width + text_proj_dim, width, 1, 1, 0, bias=False),
                image_norm(width),
                nn.LeakyReLU(0.2, inplace=True),
            )
        else:
            self.text_to_features = nn.Linear(text_proj_dim, width, bias=False)
            if projection_scales > 1:  # finer maps first in the encoder, so scale k has width / 2^k channels
                self.finer_text_to_features = nn.ModuleList(
                    nn.Linear(text_proj_dim, width // 2**k, bias=False) for k in range(1, projection_scales)
                )
            if projection_regions:
                self.region_masks = nn.Conv2d(width // 2, projection_regions, 1)
                self.region_text_to_features = nn.Linear(text_proj_dim, projection_regions * (width // 2), bias=False)
        self.to_logit = nn.Conv2d(width, 1, 4, 1, 0)
        # TAC-GAN's auxiliary classifier reads the text-free image features.
        self.class_head = nn.Conv2d(width, num_classes, 4, 1, 0) if num_classes > 0 else None
        dcgan_init_(self)
        if spectral_norm:
            for module in list(self.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(module)

    @torch.no_grad()
    def init_image_encoder_from_(self, image_encoder: nn.Sequential) -> None:
        """Start the image path from a trained encoder of the same layout: the joint embedding's θ
        (``JointImageEncoder.features``, DS-SJE, Reed et al., CVPR 2016), whose features were trained to match
        images with their captions. D then reads flower features from its first step, as discriminators started
        from pretrained networks do (Projected GANs, Sauer et al., NeurIPS 2021; Vision-aided GAN, Kumari et al.,
        CVPR 2022), and a fresh D has less to learn before G can follow it. The rest of D (its logit, the text
        projection) starts fresh.

        Raises:
            ValueError: the layouts differ (θ's channels must be ndf, 2·ndf, ... and D needs ``first_conv_bias``
                and no ``spectral_norm``); the message names the first tensor that does not fit.
        """
        mine, theirs = self.image_encoder.state_dict(), image_encoder.state_dict()
        if self.config.spectral_norm or mine.keys() != theirs.keys():
            missing, extra = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
            raise ValueError("the image encoder's layers do not match this discriminator's: "
                             f"{missing[:2]} only in the encoder, {extra[:2]} only here (D needs first_conv_bias=True, "
                             "spectral_norm=False and as many stride-2 layers)")
        for name, tensor in theirs.items():
            if mine[name].shape != tensor.shape:
                raise ValueError(f"{name}: {list(tensor.shape)} in the image encoder, {list(mine[name].shape)} here "
                                 f"(ndf={self.config.ndf}; θ's first width is {tensor.shape[0] if name == '0.weight' else '?'})")
        self.image_encoder.load_state_dict(theirs)

    def freeze_image_encoder_(self, num_blocks: int) -> None:
        """FreezeD (Mo et al., CVPR Workshops 2020): keep the first ``num_blocks`` stride-2 blocks of the image path
        fixed, their BatchNorm on its running statistics (also after ``train()``), and train only the layers above.

        With a pretrained image path (`init_image_encoder_from_`), the frozen blocks are features that already
        generalise past the training images, so D cannot memorise them there; with all blocks frozen, D is a
        projection head on fixed features, as in Projected GANs (Sauer et al., NeurIPS 2021). Frozen blocks need
        no weight gradients, so D's step is cheaper too. Not saved in the config: a training choice, re-applied by
        ``train_accelerate.py --freeze_discriminator_blocks`` on every (re)start.

        Raises:
            ValueError: ``num_blocks`` is not in [0, number of stride-2 blocks].
        """
        starts = [i for i, layer in enumerate(self.image_encoder) if isinstance(layer, nn.Conv2d)] + [len(self.image_encoder)]
        if not 0 <= num_blocks < len(starts):
            raise ValueError(f"num_blocks must be in [0, {len(starts) - 1}] (D's stride-2 blocks), got {num_blocks}")
        self.image_encoder.requires_grad_(True)
        self._frozen_layers = list(self.image_encoder)[:starts[num_blocks]]  # a list: no submodule, no state-dict keys
        for layer in self._frozen_layers:
            layer.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "GanClsDiscriminator":
        super().train(mode)
        for layer in getattr(self, "_frozen_layers", ()):
            layer.eval()
        return self

    def forward(self, images: torch.Tensor, text_embeds: torch.Tensor) -> DiscriminatorOutput:
        """Score images [B, C, R, R] against text embeddings [k·B, D]: k captions per image, stacked caption-major.

        Scoring several captions per image in one call (GAN-CLS's right and wrong text) encodes each image once,
        and keeps every discriminator evaluation a single ``forward``, which DistributedDataParallel requires.
        """
        scales = []  # the encoder's output at every resolution, R/2 .. 4
        features = images
        for layer in self.image_encoder:
            features = layer(features)
            if isinstance(layer, nn.LeakyReLU):
                scales.append(features)
        repeats, remainder = divmod(text_embeds.shape[0], features.shape[0])
        if remainder or repeats < 1:
            raise ValueError(f"{text_embeds.shape[0]} text embeddings for {features.shape[0]} images: need a multiple")
        text = self.text_projection(text_embeds if self.text_attention is None else self.text_attention(text_embeds))
        unconditional_logits = image_embeds = text_features = None
        if self.config.conditioning == "concat":
            text = text[:, :, None, None].expand(-1, -1, *features.shape[-2:])
            logits = self.to_logit(self.joint(torch.cat([features.repeat(repeats, 1, 1, 1), text], dim=1))).flatten()
        else:
            finer = getattr(self, "finer_text_to_features", [])
            # Finer maps are averaged × 16: the same scale as the 4×4 sum, whatever the map's size.
            image_parts = [features.sum(dim=(2, 3))] + [scales[-1 - k].mean(dim=(2, 3)) * 16 for k in range(1, len(finer) + 1)]
            text_parts = [self.text_to_features(text)] + [text_to_features(text) for text_to_features in finer]
            if self.config.projection_regions:
                regional = scales[-2]
                masks = soft_masks(self.region_masks(regional))
                # Σ over the map × 16 / its positions: a region covering it all is on the 4×4 sum's scale.
                pooled = torch.einsum("bkhw,bchw->bkc", masks, regional.to(masks.dtype)) * (16 / regional[0, 0].numel())
                image_parts.append(pooled.flatten(1))
                text_parts.append(self.region_text_to_features(text))
            image_embeds, text_features = torch.cat(image_parts, dim=1), torch.cat(text_parts, dim=1)
            unconditional_logits = self.to_logit(features).flatten()
            logits = unconditional_logits.repeat(repeats) + (text_features * image_embeds.repeat(repeats, 1)).sum(dim=1)
        class_logits = self.class_head(features).flatten(1) if self.class_head is not None else None
        return DiscriminatorOutput(logits=logits, image_features=features, class_logits=class_logits,
                                   unconditional_logits=unconditional_logits, image_embeds=image_embeds, text_features=text_features)
