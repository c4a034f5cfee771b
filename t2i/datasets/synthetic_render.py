"""Procedural flower rendering with numpy + PIL, used by `t2i.datasets.synthetic`.

Everything is drawn with soft (anti-aliased) masks on a float RGB canvas in [0, 1]. Each petal, leaf
and disc is evaluated only inside its own bounding box, so a flower with 60 petals still costs a few
milliseconds at 128 px. All randomness comes from the `numpy.random.Generator` passed in, which makes
a rendering a pure function of (attributes, generator state, size).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# RGB in [0, 1]. Petal and secondary colours share one palette; centres have their own.
PETAL_PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.07, 0.10),
    "orange": (0.96, 0.50, 0.08),
    "yellow": (0.98, 0.85, 0.15),
    "pink": (0.97, 0.58, 0.72),
    "magenta": (0.82, 0.12, 0.58),
    "purple": (0.45, 0.15, 0.62),
    "lavender": (0.74, 0.66, 0.94),
    "blue": (0.18, 0.32, 0.84),
    "turquoise": (0.22, 0.76, 0.74),
    "white": (0.96, 0.96, 0.94),
    "maroon": (0.44, 0.05, 0.14),
    "peach": (0.99, 0.74, 0.55),
}
CENTER_PALETTE: dict[str, tuple[float, float, float]] = {
    "yellow": (0.95, 0.80, 0.10),
    "orange": (0.92, 0.48, 0.08),
    "brown": (0.40, 0.23, 0.10),
    "black": (0.08, 0.06, 0.05),
    "green": (0.42, 0.60, 0.20),
    "white": (0.93, 0.92, 0.85),
    "red": (0.72, 0.10, 0.10),
}
# Petal width as a fraction of its length.
SHAPE_WIDTH = {"round": 0.9, "oval": 0.5, "pointed": 0.5, "thin": 0.17, "heart": 0.85, "strip": 1.0}
CENTER_RADIUS = {"small": 0.13, "large": 0.27}  # fraction of the flower radius

_GREENS = np.array(
    [[0.10, 0.22, 0.07], [0.20, 0.38, 0.10], [0.33, 0.50, 0.16], [0.45, 0.58, 0.22], [0.16, 0.30, 0.16]],
    dtype=np.float32,
)


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of pixel centres; cached because every shape needs them."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _crop_box(size: int, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
    xs, xe = max(0, math.floor(x0)), min(size, math.ceil(x1))
    ys, ye = max(0, math.floor(y0)), min(size, math.ceil(y1))
    if xs >= xe or ys >= ye:
        return None
    return slice(ys, ye), slice(xs, xe)


def _blur(img: np.ndarray, radius: float, size: int | None = None) -> np.ndarray:
    """Gaussian blur, then (optionally) a bicubic resize to size x size."""
    pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    if size is not None and size != pil.width:
        pil = pil.resize((size, size), Image.BICUBIC)
    return np.asarray(pil, dtype=np.float32) / 255


def _fractal_noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...] = (3, 6, 12, 24)) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1], shape [size, size]."""
    total = np.zeros((size, size), np.float32)
    amplitude = 1.0
    for cells in octaves:
        grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
        total += amplitude * np.asarray(grid.resize((size, size), Image.BICUBIC))
        amplitude *= 0.5
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def jitter_color(rgb: tuple[float, float, float], rng: np.random.Generator, amount: float = 0.04) -> np.ndarray:
    """A palette colour with small per-instance variation that keeps its name right."""
    color = np.asarray(rgb, np.float32) * rng.uniform(0.88, 1.06) + rng.normal(0, amount, 3)
    return np.clip(color, 0.0, 1.0).astype(np.float32)


@dataclass
class Petal:
    """One petal (or leaf, or stem) in image coordinates: from its base (x, y) along `angle`."""

    x: float
    y: float
    angle: float
    length: float
    width: float
    shape: str
    color: np.ndarray
    pattern: str = "none"  # none | edges | stripes | spots | midrib
    secondary: np.ndarray | None = None
    spots: np.ndarray | None = None  # [k, 3]: position along (0..1), across (-1..1), radius (px)
    vein: float = 0.06
    light: float = 0.0  # brightness tilt, from the petal's orientation relative to the light
    shadow: float = 0.25


def _half_width(shape: str, t: np.ndarray, across: np.ndarray) -> np.ndarray:
    """Half-width profile in [0, 1] along the petal axis (t in 0..1); -1 outside the petal."""
    if shape == "heart":  # a notch at the tip, deepest on the axis
        t = t / (1.0 - 0.3 * np.exp(-((across / 0.35) ** 2)))
    tc = np.clip(t, 0.0, 1.0)
    if shape == "pointed":
        h = (1.0 - tc) * np.sqrt(tc) / 0.385  # linear taper to a point
    elif shape == "heart":
        h = np.sqrt(np.clip(tc * (1.0 - tc**3), 0.0, None)) / 0.687  # widest near the tip
    elif shape == "strip":
        h = np.ones_like(tc)
    else:  # round, oval, thin: ellipses of different aspect
        h = np.sqrt(np.clip(1.0 - (2.0 * tc - 1.0) ** 2, 0.0, None))
    return np.where((t > 0.0) & (t < 1.0), h, -1.0)


def paint_petal(canvas: np.ndarray, p: Petal) -> None:
    """Composite one shaded, optionally patterned petal onto `canvas` in place."""
    size = canvas.shape[0]
    half = p.width / 2
    cos, sin = math.cos(p.angle), math.sin(p.angle)
    tip_x, tip_y = p.x + p.length * cos, p.y + p.length * sin
    pad = half + 2
    box = _crop_box(size, min(p.x, tip_x) - pad, max(p.x, tip_x) + pad, min(p.y, tip_y) - pad, max(p.y, tip_y) + pad)
    if box is None:
        return
    yy, xx = _pixel_grid(size)
    dx, dy = xx[box] - p.x, yy[box] - p.y
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    t = along / p.length
    h = _half_width(p.shape, t, across / half) * half
    dist = h - np.abs(across)  # > 0 inside, roughly the distance to the outline in px
    alpha = np.clip(dist + 0.5, 0.0, 1.0)
    region = canvas[box]
    if p.shadow:  # contact shadow on whatever is underneath, for depth between overlapping petals
        reach = max(1.5, 0.05 * p.length)
        shadow = np.clip(1.0 + dist / reach, 0.0, 1.0) * (1.0 - alpha) * ((t > 0.0) & (t < 1.05))
        region *= (1.0 - p.shadow * shadow)[..., None]
    tc = np.clip(t, 0.0, 1.0)
    local_half = np.maximum(h, 0.5)
    shade = (0.7 + 0.4 * tc) * (1.0 - 0.25 * np.clip(np.abs(across) / local_half, 0, 1) ** 2) * (1.0 + p.light)
    if p.vein:  # fine veins, faded out where they would be narrower than a pixel
        strength = p.vein * min(1.0, half / 6.0)
        shade *= 1.0 - strength * (0.5 + 0.5 * np.cos(across / half * 4.5 * math.pi)) * tc
    color = p.color * shade[..., None]
    mask = _pattern_mask(p, dist, tc, along, across, local_half, half)
    if mask is not None:
        color += (p.secondary * shade[..., None] - color) * mask[..., None]
    region += (color - region) * alpha[..., None]


def _pattern_mask(
    p: Petal, dist: np.ndarray, tc: np.ndarray, along: np.ndarray, across: np.ndarray, local_half: np.ndarray, half: float
) -> np.ndarray | None:
    if p.pattern == "edges":
        band = max(1.0, 0.3 * half)
        return np.clip(band - dist + 0.5, 0, 1) * np.clip((tc - 0.3) / 0.15, 0, 1)
    if p.pattern in ("stripes", "midrib"):
        positions = (0.0,) if p.pattern == "midrib" or p.shape == "thin" else (-0.5, 0.0, 0.5)
        width = max(0.7, 0.08 * half)
        mask = np.zeros_like(tc)
        for pos in positions:
            mask = np.maximum(mask, np.clip(width - np.abs(across - pos * local_half) + 0.5, 0, 1))
        return mask * ((tc > 0.03) & (tc < 0.85))
    if p.pattern == "spots" and p.spots is not None:
        mask = np.zeros_like(tc)
        for pos, off, radius in p.spots:
            d = np.sqrt((along - pos * p.length) ** 2 + (across - off * 0.6 * half) ** 2)
            mask = np.maximum(mask, np.clip(radius - d + 0.5, 0, 1))
        return mask
    return None


def paint_disc(
    canvas: np.ndarray,
    x: float,
    y: float,
    radius: float,
    color: np.ndarray,
    rng: np.random.Generator | None = None,
    texture: float = 0.0,
    light_angle: float = 0.0,
    opacity: float = 1.0,
) -> None:
    """Composite a shaded (optionally speckled) disc, e.g. a flower centre, anther or bokeh light."""
    size = canvas.shape[0]
    box = _crop_box(size, x - radius - 1, x + radius + 1, y - radius - 1, y + radius + 1)
    if box is None:
        return
    yy, xx = _pixel_grid(size)
    dx, dy = xx[box] - x, yy[box] - y
    dist = np.sqrt(dx * dx + dy * dy)
    alpha = np.clip(radius - dist + 0.5, 0.0, 1.0) * opacity
    rel = dist / max(radius, 0.5)
    lit = (dx * math.cos(light_angle) + dy * math.sin(light_angle)) / max(radius, 0.5)
    shade = (1.0 - 0.35 * rel**2) * (1.0 + 0.15 * lit)
    if texture and rng is not None:  # seeds / pollen speckle
        shade *= 1.0 - texture * rng.random(dist.shape, dtype=np.float32)
    region = canvas[box]
    region += (color * shade[..., None] - region) * alpha[..., None]


def _random_green(rng: np.random.Generator) -> np.ndarray:
    a, b = _GREENS[rng.integers(len(_GREENS))], _GREENS[rng.integers(len(_GREENS))]
    return np.clip(a + (b - a) * rng.random() + rng.normal(0, 0.03, 3), 0, 1).astype(np.float32)


def _random_leaf(rng: np.random.Generator, x: float, y: float, angle: float, length: float) -> Petal:
    return Petal(
        x, y, angle, length, length * rng.uniform(0.3, 0.45), "pointed", _random_green(rng),
        pattern="midrib", secondary=np.clip(_random_green(rng) * 1.25, 0, 1), vein=0.0, shadow=0.3,
    )


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """One of several out-of-focus foliage-like backgrounds, float [size, size, 3].

    Drawn at half resolution and upscaled: it is blurred anyway, and this halves the rendering time.
    """
    work = max(16, size // 2)
    kind = ("foliage", "bokeh", "grass", "dark", "earth")[rng.integers(5)]
    low, high = _random_green(rng) * 0.6, _random_green(rng) * 1.2
    if kind == "earth":  # soil with moss
        low, high = np.array([0.22, 0.15, 0.08]) * rng.uniform(0.7, 1.2), _random_green(rng)
    noise = _fractal_noise(rng, work)
    canvas = (low + (high - low) * noise[..., None]).astype(np.float32)
    if kind in ("foliage", "dark"):
        for _ in range(rng.integers(6, 15)):
            x, y = rng.uniform(-0.1, 1.1, 2) * work
            paint_petal(canvas, _random_leaf(rng, x, y, rng.uniform(0, 2 * math.pi), work * rng.uniform(0.15, 0.45)))
        if kind == "dark":
            canvas *= rng.uniform(0.2, 0.4)
        radius = work * rng.uniform(0.02, 0.045)
    elif kind == "bokeh":
        canvas = _blur(canvas, work * 0.04)
        for _ in range(rng.integers(8, 21)):
            x, y = rng.uniform(0, 1, 2) * work
            light = np.clip(_random_green(rng) * 1.8 + rng.uniform(0, 0.4), 0, 1)
            paint_disc(canvas, x, y, work * rng.uniform(0.02, 0.08), light, opacity=rng.uniform(0.3, 0.7))
        radius = work * 0.012
    elif kind == "grass":
        for _ in range(rng.integers(25, 50)):
            x, y = rng.uniform(0, 1) * work, rng.uniform(0.5, 1.2) * work
            blade = Petal(
                x, y, -math.pi / 2 + rng.normal(0, 0.3), work * rng.uniform(0.3, 0.8), work * rng.uniform(0.012, 0.03),
                "pointed", _random_green(rng), vein=0.0, shadow=0.15,
            )
            paint_petal(canvas, blade)
        radius = work * rng.uniform(0.008, 0.02)
    else:  # earth: fine grain, lightly blurred
        canvas *= (0.85 + 0.3 * rng.random((work, work), dtype=np.float32))[..., None]
        radius = work * 0.006
    return _blur(canvas, radius, size)


def _paint_stem_and_leaves(canvas: np.ndarray, rng: np.random.Generator, x: float, y: float, radius: float) -> None:
    size = canvas.shape[0]
    angle = math.pi / 2 + rng.normal(0, 0.25)  # downwards, with a lean
    length = (size - y) / max(math.sin(angle), 0.3) + radius
    stem = Petal(x, y, angle, length, max(1.5, radius * 0.09), "strip", _random_green(rng), vein=0.0, shadow=0.3)
    paint_petal(canvas, stem)
    for _ in range(rng.integers(1, 3)):
        along = radius * rng.uniform(1.1, 2.2)
        bx, by = x + along * math.cos(angle), y + along * math.sin(angle)
        side = 1 if rng.random() < 0.5 else -1
        paint_petal(canvas, _random_leaf(rng, bx, by, angle + side * rng.uniform(0.6, 1.3), radius * rng.uniform(0.6, 1.0)))


def render_flower(attributes: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """Render a flower with the given attribute values; returns uint8 [size, size, 3]."""
    canvas = render_background(rng, size)
    radius = size * rng.uniform(0.26, 0.40)
    cx, cy = size / 2 + rng.normal(0, 0.07 * size, 2)
    if rng.random() < 0.12:  # partly out of frame
        direction = rng.uniform(0, 2 * math.pi)
        cx, cy = cx + 0.3 * size * math.cos(direction), cy + 0.3 * size * math.sin(direction)
    light_angle = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.45:
        _paint_stem_and_leaves(canvas, rng, cx, cy, radius)

    petal_color = jitter_color(PETAL_PALETTE[attributes["petal_color"]], rng)
    pattern = attributes["pattern"]
    secondary = jitter_color(PETAL_PALETTE[attributes["secondary_color"]], rng) if pattern != "none" else None
    shape, count = attributes["petal_shape"], attributes["petal_count"]
    rotation = rng.uniform(0, 2 * math.pi)
    sector = 2 * math.pi / count
    for layer in range(attributes["num_layers"]):
        scale = 1.0 if layer == 0 else rng.uniform(0.55, 0.7)
        tint = 1.0 if layer == 0 else rng.uniform(1.02, 1.1)  # inner petals catch more light
        for k in range(count):
            angle = rotation + (k + 0.5 * layer) * sector + rng.normal(0, 0.06 * sector)
            length = radius * scale * rng.uniform(0.9, 1.08)
            spots = None
            if pattern == "spots":
                n = rng.integers(2, 6)
                spots = np.stack([rng.uniform(0.2, 0.7, n), rng.uniform(-0.8, 0.8, n), np.full(n, max(0.9, 0.07 * length))], 1)
            paint_petal(canvas, Petal(
                cx, cy, angle, length, length * SHAPE_WIDTH[shape] * rng.uniform(0.9, 1.1), shape,
                np.clip(petal_color * tint, 0, 1), pattern, secondary, spots,
                vein=rng.uniform(0.03, 0.09), light=0.1 * math.cos(angle - light_angle),
            ))

    center_radius = radius * CENTER_RADIUS[attributes["center_size"]] * rng.uniform(0.9, 1.1)
    center_color = jitter_color(CENTER_PALETTE[attributes["center_color"]], rng)
    paint_disc(canvas, cx, cy, center_radius, center_color, rng, texture=0.3, light_angle=light_angle)
    if attributes["center_size"] == "small" and rng.random() < 0.6:  # a ring of stamens
        anther = jitter_color((0.95, 0.85, 0.35), rng)
        for _ in range(rng.integers(6, 15)):
            a, r = rng.uniform(0, 2 * math.pi), center_radius * rng.uniform(1.2, 1.7)
            paint_disc(canvas, cx + r * math.cos(a), cy + r * math.sin(a), max(0.8, radius * 0.035), anther)
    if rng.random() < 0.12:  # a foreground leaf entering from the border
        edge_angle = rng.uniform(0, 2 * math.pi)
        x, y = size / 2 + 0.75 * size * math.cos(edge_angle), size / 2 + 0.75 * size * math.sin(edge_angle)
        angle = edge_angle + math.pi + rng.normal(0, 0.3)
        paint_petal(canvas, _random_leaf(rng, x, y, angle, size * rng.uniform(0.4, 0.6)))

    yy, xx = _pixel_grid(size)
    centred_x, centred_y = (xx - size / 2) / size, (yy - size / 2) / size
    gradient = 1.0 + rng.uniform(0.1, 0.5) * (centred_x * math.cos(light_angle) + centred_y * math.sin(light_angle))
    vignette = 1.0 - rng.uniform(0.0, 0.6) * (centred_x**2 + centred_y**2)
    canvas *= (gradient * vignette * rng.uniform(0.9, 1.1))[..., None]
    canvas += rng.normal(0, 0.012, canvas.shape).astype(np.float32)  # sensor grain
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 RGB array (deterministic for a given libjpeg build)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
