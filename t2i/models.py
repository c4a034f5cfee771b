"""GAN-CLS generator and matching-aware discriminator (Reed et al., ICML 2016), as diffusers models."""

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
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


def _text_projection(text_embed_dim: int, text_proj_dim: int) -> nn.Sequential:
    # Reed et al. compress the sentence embedding before it meets image features in both G and D.
    return nn.Sequential(nn.Linear(text_embed_dim, text_proj_dim), nn.LeakyReLU(0.2, inplace=True))


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
    ):
        super().__init__()
        num_up = _num_up_blocks(resolution)
        self.text_projection = _text_projection(text_embed_dim, text_proj_dim)
        width = ngf * 2 ** (num_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(noise_dim + text_proj_dim, width, 4, 1, 0, bias=False),
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
        h = torch.cat([noise, self.text_projection(text_embeds)], dim=1)
        return self.net(h[:, :, None, None])


class GanClsDiscriminator(SafetensorsOnlyMixin, ModelMixin, ConfigMixin):
    """Matching-aware discriminator: scores whether an image is real *and* matches its text.

    The image path is split from the scoring head so that a training step encodes each real image
    once and scores it against both the right and the wrong caption.
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
    ):
        super().__init__()
        num_down = _num_up_blocks(resolution)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for _ in range(num_down - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        self.image_encoder = nn.Sequential(*layers)
        self.text_projection = _text_projection(text_embed_dim, text_proj_dim)
        self.joint = nn.Sequential(
            nn.Conv2d(width + text_proj_dim, width, 1, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.to_logit = nn.Conv2d(width, 1, 4, 1, 0)
        # TAC-GAN's auxiliary classifier reads the text-free image features.
        self.class_head = nn.Conv2d(width, num_classes, 4, 1, 0) if num_classes > 0 else None
        dcgan_init_(self)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images [B, C, R, R] into 4×4 feature maps (used for scoring and feature matching)."""
        return self.image_encoder(images)

    def score(self, features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Logit [B] that the encoded images are real and match the text embeddings."""
        text = self.text_projection(text_embeds)[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        return self.to_logit(self.joint(torch.cat([features, text], dim=1))).flatten()

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] for the auxiliary (TAC-GAN) loss."""
        if self.class_head is None:
            raise RuntimeError("this discriminator was built with num_classes=0 and has no class head")
        return self.class_head(features).flatten(1)

    def forward(self, images: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Logit [B] that each image is real and matches its text embedding."""
        return self.score(self.image_features(images), text_embeds)
