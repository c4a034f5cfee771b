"""DiffAugment (Zhao et al., NeurIPS 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

With 8k training images the discriminator memorises the real set within a few thousand steps, and its gradient
stops telling the generator anything. DiffAugment applies the same random, differentiable transformations to
every image the discriminator sees, real and generated, in its update and in the generator's, so D cannot
memorise exact pixels and G is never pushed towards the augmentations themselves.

Only translation and cutout are offered: both move or hide pixels and never change a colour. Colour
augmentation would teach a text-conditioned D that "red" and "orange" petals may be the same image.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DIFF_AUGMENT_POLICIES = ("translation", "cutout")


def diff_augment(
    images: torch.Tensor,
    policy: Sequence[str] = DIFF_AUGMENT_POLICIES,
    generator: torch.Generator | None = None,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.5,
) -> torch.Tensor:
    """Randomly translate and cut out images [B, C, H, W] (any value range); differentiable, same shape.

    - ``translation``: each image shifts by up to ``translation_ratio`` of its size in x and y (whole pixels);
      uncovered pixels become 0 (mid-grey for images in [-1, 1]).
    - ``cutout``: one square of ``cutout_ratio`` × the size, at a random centre per image, is set to 0.

    Every output pixel is thus an input pixel of the same image, or 0. The random draws come from ``generator`` (a
    CPU ``torch.Generator``, so a seed means the same augmentation on any device).

    Raises:
        ValueError: an unknown policy name.
    """
    unknown = set(policy) - set(DIFF_AUGMENT_POLICIES)
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {sorted(unknown)}; choose from {DIFF_AUGMENT_POLICIES}")
    batch, _, height, width = images.shape
    device = images.device
    if "translation" in policy:
        shift_y, shift_x = int(height * translation_ratio + 0.5), int(width * translation_ratio + 0.5)
        dy = torch.randint(-shift_y, shift_y + 1, (batch, 1, 1), generator=generator).to(device)
        dx = torch.randint(-shift_x, shift_x + 1, (batch, 1, 1), generator=generator).to(device)
        rows = (torch.arange(height, device=device)[None, :, None] + dy + shift_y).expand(batch, height, width)
        cols = (torch.arange(width, device=device)[None, None, :] + dx + shift_x).expand(batch, height, width)
        padded = F.pad(images, [shift_x, shift_x, shift_y, shift_y])
        index = torch.arange(batch, device=device)[:, None, None].expand(batch, height, width)
        images = padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)
    if "cutout" in policy:
        size_y, size_x = int(height * cutout_ratio + 0.5), int(width * cutout_ratio + 0.5)
        top = torch.randint(0, height + (1 - size_y % 2), (batch, 1, 1), generator=generator).to(device) - size_y // 2
        left = torch.randint(0, width + (1 - size_x % 2), (batch, 1, 1), generator=generator).to(device) - size_x // 2
        y = torch.arange(height, device=device)[None, :, None]
        x = torch.arange(width, device=device)[None, None, :]
        hidden = (y >= top) & (y < top + size_y) & (x >= left) & (x < left + size_x)
        images = images * (~hidden)[:, None].to(images.dtype)
    return images
