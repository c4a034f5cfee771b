"""DiffAugment: translation and cutout move or hide pixels and never change a colour."""

import pytest
import torch

from t2i.diffaugment import diff_augment


def test_diff_augment_leaves_colours_unchanged():
    torch.manual_seed(0)
    images = torch.rand(16, 3, 64, 64) * 1.8 - 0.9  # no exact zeros in the input
    out = diff_augment(images, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    for i in range(len(images)):
        pixels = {tuple(p) for p in images[i].flatten(1).T.tolist()}
        shown = out[i].flatten(1).T
        kept = shown.abs().sum(dim=1) > 0
        # Every visible pixel is one of this image's own RGB triples, unchanged; the rest is the fill value 0.
        assert all(tuple(p) in pixels for p in shown[kept].tolist())
        assert 0.3 < kept.float().mean() < 1.0  # a cutout of a quarter of the image, plus the translation border


def test_translation_moves_whole_pixels_and_cutout_hides_a_square():
    images = torch.arange(64.0).view(1, 1, 8, 8) + 1
    shifted = diff_augment(images, ("translation",), torch.Generator().manual_seed(3))
    inside = shifted[shifted > 0]
    assert set(inside.tolist()) <= set(images.flatten().tolist())  # whole pixels of the input, no blending
    rows = shifted[0, 0]
    visible = rows[rows > 0].view(-1) if bool((rows > 0).all()) else None
    # A shift keeps neighbours neighbours: along any visible row, values step by exactly 1.
    for row in rows:
        values = row[row > 0]
        assert torch.all(values.diff() == 1)
    assert visible is None or torch.equal(visible, images.flatten())
    cut = diff_augment(torch.ones(4, 3, 16, 16), ("cutout",), torch.Generator().manual_seed(0))
    assert all(int((c[0] == 0).sum()) <= 64 for c in cut)  # at most an 8×8 square (less at the border)
    assert torch.equal(cut[:, 0], cut[:, 1])  # the same square in every channel


def test_diff_augment_is_seeded_and_differentiable():
    images = torch.randn(4, 3, 32, 32, requires_grad=True)
    a = diff_augment(images, generator=torch.Generator().manual_seed(0))
    b = diff_augment(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    a.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown DiffAugment policies"):
        diff_augment(images, ("color",))
