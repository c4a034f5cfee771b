"""GAN-CLS generator and matching-aware discriminator (Reed et al., ICML 2016), as diffusers models."""

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
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
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


def _text_projection(text_embed_dim: int, text_proj_dim: int, batch_norm: bool) -> nn.Sequential:
    # Reed et al. compress the sentence embedding before it meets image features in both G and D.
    layers: list[nn.Module] = [nn.Linear(text_embed_dim, text_proj_dim)]
    if batch_norm:
        # Sentence embeddings are small (norm ≈ 1 for MiniLM and our char-CNN-RNN), so after DCGAN's N(0, 0.02)
        # init the projected text starts tens of times weaker than the noise, and both networks learn to ignore it.
        # BatchNorm puts it on the scale of the noise and the image features from the first step.
        layers.append(nn.BatchNorm1d(text_proj_dim))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2, inplace=True))


class GanClsGenerator(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    """DCGAN generator conditioned on a text embedding: [z ; φ(e)] → up-convolutions → tanh image."""

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
    ):
        super().__init__()
        num_up = _num_up_blocks(resolution)
        self.text_projection = _text_projection(text_embed_dim, text_proj_dim, text_batch_norm)
        width = ngf * 2 ** (num_up - 1)
        # DCGAN's "project and reshape": on a 1×1 input the first 4×4 transposed convolution is a matrix product,
        # and as a Linear layer it runs several times faster on CPU.
        layers: list[nn.Module] = [
            nn.Linear(noise_dim + text_proj_dim, width * 16, bias=False),
            nn.Unflatten(1, (width, 4, 4)),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(num_up - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, noise: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Map noise [B, noise_dim] and text embeddings [B, text_embed_dim] to images [B, C, R, R] in [-1, 1]."""
        return self.net(torch.cat([noise, self.text_projection(text_embeds)], dim=1))


@dataclass
class DiscriminatorOutput(BaseOutput):
    """What the discriminator computes in one pass.

    Args:
        logits: [k·B] "real and matching" logits, one per (image, caption) pair.
        image_features: [B, C, 4, 4] text-free image features (for feature matching).
        class_logits: [B, num_classes] auxiliary class logits (TAC-GAN), or ``None`` without a class head.
    """

    logits: torch.Tensor
    # Defaults let BaseOutput be rebuilt from a dict, as accelerate's mixed-precision output casting does.
    image_features: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None


CONDITIONINGS = ("concat", "projection")


class GanClsDiscriminator(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    """Matching-aware discriminator: scores whether an image is real *and* matches its text.

    Images are encoded by stride-2 convolutions to a 4×4 map. With ``conditioning="concat"`` (Reed) the projected
    text embedding is replicated over that map, concatenated, and a 1×1 then a 4×4 convolution give the logit.
    With ``"projection"`` (Miyato & Koyama, 2018) the logit is a text-free 4×4 convolution of the map plus the
    inner product of the projected text with the map's pooled features, so matching is one direct term.
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
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        num_down = _num_up_blocks(resolution)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for _ in range(num_down - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        self.image_encoder = nn.Sequential(*layers)
        self.text_projection = _text_projection(text_embed_dim, text_proj_dim, text_batch_norm)
        if conditioning == "concat":
            self.joint = nn.Sequential(
                nn.Conv2d(width + text_proj_dim, width, 1, 1, 0, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(0.2, inplace=True),
            )
        else:
            self.text_to_features = nn.Linear(text_proj_dim, width, bias=False)
        self.to_logit = nn.Conv2d(width, 1, 4, 1, 0)
        # TAC-GAN's auxiliary classifier reads the text-free image features.
        self.class_head = nn.Conv2d(width, num_classes, 4, 1, 0) if num_classes > 0 else None
        dcgan_init_(self)

    def forward(self, images: torch.Tensor, text_embeds: torch.Tensor) -> DiscriminatorOutput:
        """Score images [B, C, R, R] against text embeddings [k·B, D]: k captions per image, stacked caption-major.

        Scoring several captions per image in one call (GAN-CLS's right and wrong text) encodes each image once,
        and keeps every discriminator evaluation a single ``forward``, which DistributedDataParallel requires.
        """
        features = self.image_encoder(images)
        repeats, remainder = divmod(text_embeds.shape[0], features.shape[0])
        if remainder or repeats < 1:
            raise ValueError(f"{text_embeds.shape[0]} text embeddings for {features.shape[0]} images: need a multiple")
        text = self.text_projection(text_embeds)
        if self.config.conditioning == "concat":
            text = text[:, :, None, None].expand(-1, -1, *features.shape[-2:])
            logits = self.to_logit(self.joint(torch.cat([features.repeat(repeats, 1, 1, 1), text], dim=1))).flatten()
        else:
            matching = (self.text_to_features(text) * features.sum(dim=(2, 3)).repeat(repeats, 1)).sum(dim=1)
            logits = self.to_logit(features).flatten().repeat(repeats) + matching
        class_logits = self.class_head(features).flatten(1) if self.class_head is not None else None
        return DiscriminatorOutput(logits=logits, image_features=features, class_logits=class_logits)
