"""Pictures of the embedded world: each class has a visual identity a tiny image model can learn.

An instrument is a sprite (shape family + palette + texture) drawn once per video with random
hue/brightness jitter, size and pose, then pasted on a cluttered background in every frame with a
small sway, so consecutive frames move a little. Images are uint8 numpy arrays [H, W, 3].
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
SUPERSAMPLE = 2  # sprites are drawn at 2x and downsampled: smooth edges at 64 px


def _jitter(rgb: RGB, rng: np.random.Generator, hue: float = 0.03, light: float = 0.12) -> RGB:
    """The colour with a small random shift of hue and brightness (within-class variation)."""
    h, lightness, s = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    h = (h + rng.uniform(-hue, hue)) % 1.0
    lightness = float(np.clip(lightness * rng.uniform(1 - light, 1 + light), 0.02, 0.98))
    return tuple(round(255 * c) for c in colorsys.hls_to_rgb(h, lightness, s))


def _box(cx: float, cy: float, w: float, h: float, s: int) -> list[float]:
    """Axis-aligned box in sprite pixels from centre/size given as fractions of the sprite side."""
    return [(cx - w / 2) * s, (cy - h / 2) * s, (cx + w / 2) * s, (cy + h / 2) * s]


def _accordion(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    d.rectangle(_box(0.5, 0.5, 0.8, 0.55, s), fill=c[0])
    for i in range(9):  # the bellows: alternating folds, the class's texture
        x = 0.3 + i * 0.045
        d.rectangle(_box(x, 0.5, 0.025, 0.55, s), fill=c[1] if i % 2 else c[2])
    d.rectangle(_box(0.17, 0.5, 0.12, 0.5, s), fill=(240, 240, 235))
    for i in range(6):
        d.rectangle(_box(0.2, 0.3 + i * 0.08, 0.06, 0.035, s), fill=(20, 20, 20))


def _guitar(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    d.rectangle(_box(0.5, 0.27, 0.08, 0.5, s), fill=c[1])  # neck
    d.rectangle(_box(0.5, 0.04, 0.12, 0.08, s), fill=c[2])  # headstock
    d.ellipse(_box(0.5, 0.78, 0.5, 0.38, s), fill=c[0])
    d.ellipse(_box(0.5, 0.55, 0.38, 0.3, s), fill=c[0])
    d.ellipse(_box(0.5, 0.6, 0.13, 0.13, s), fill=(25, 15, 10))  # sound hole
    d.rectangle(_box(0.5, 0.82, 0.2, 0.03, s), fill=c[2])  # bridge


def _bowed(d: ImageDraw.ImageDraw, s: int, c: list[RGB], scale: float, bow: bool) -> None:
    """Violin-family body: two bouts, f-holes, black fingerboard; the violin adds a bow."""
    w = 0.42 * scale
    d.ellipse(_box(0.5, 0.72, w * 1.15, 0.34 * scale, s), fill=c[0])
    d.ellipse(_box(0.5, 0.46, w, 0.3 * scale, s), fill=c[0])
    d.rectangle(_box(0.5, 0.6, w * 0.55, 0.12, s), fill=c[0])
    for x in (0.43, 0.57):
        d.line([x * s, 0.58 * s, x * s, 0.72 * s], fill=c[2], width=max(1, s // 40))
    d.rectangle(_box(0.5, 0.35, 0.06, 0.55, s), fill=(15, 15, 15))
    d.ellipse(_box(0.5, 0.07, 0.08, 0.08, s), fill=c[1])
    if bow:
        d.line([0.1 * s, 0.95 * s, 0.92 * s, 0.25 * s], fill=(230, 225, 200), width=max(2, s // 30))
        d.line([0.1 * s, 0.95 * s, 0.92 * s, 0.25 * s], fill=c[1], width=max(1, s // 90))
    else:  # the cello's endpin
        d.line([0.5 * s, 0.88 * s, 0.5 * s, 0.99 * s], fill=(160, 160, 160), width=max(1, s // 40))


def _cello(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    _bowed(d, s, c, scale=1.25, bow=False)


def _violin(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    _bowed(d, s, c, scale=0.85, bow=True)


def _clarinet(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    d.rectangle(_box(0.5, 0.47, 0.1, 0.82, s), fill=c[0])
    d.polygon(
        [(0.45 * s, 0.85 * s), (0.55 * s, 0.85 * s), (0.64 * s, 0.97 * s), (0.36 * s, 0.97 * s)],
        fill=c[0],
    )  # bell
    for i in range(7):  # silver keys: the texture
        d.ellipse(_box(0.5, 0.2 + i * 0.09, 0.07, 0.04, s), fill=c[1])
    d.rectangle(_box(0.5, 0.06, 0.06, 0.06, s), fill=c[2])


def _flute(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    d.rectangle(_box(0.5, 0.5, 0.92, 0.07, s), fill=c[0])
    d.ellipse(_box(0.12, 0.46, 0.08, 0.06, s), fill=c[1])  # lip plate
    for i in range(8):
        d.ellipse(_box(0.3 + i * 0.075, 0.5, 0.04, 0.04, s), fill=c[2])
    d.line([0.05 * s, 0.48 * s, 0.95 * s, 0.48 * s], fill=(255, 255, 255), width=max(1, s // 60))


def _saxophone(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    width = max(2, int(0.12 * s))
    d.line([0.35 * s, 0.12 * s, 0.35 * s, 0.7 * s], fill=c[0], width=width)
    d.arc(_box(0.5, 0.7, 0.3, 0.3, s), 0, 180, fill=c[0], width=width)  # the J curve
    d.line([0.65 * s, 0.7 * s, 0.68 * s, 0.45 * s], fill=c[0], width=width)
    d.polygon(
        [(0.6 * s, 0.47 * s), (0.78 * s, 0.3 * s), (0.86 * s, 0.38 * s), (0.72 * s, 0.5 * s)],
        fill=c[0],
    )  # bell
    d.line([0.35 * s, 0.12 * s, 0.25 * s, 0.04 * s], fill=(20, 20, 20), width=max(1, width // 2))
    for i in range(5):
        d.ellipse(_box(0.35, 0.25 + i * 0.09, 0.06, 0.05, s), fill=c[1])


def _trumpet(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    d.rectangle(_box(0.45, 0.5, 0.7, 0.07, s), fill=c[0])
    d.rectangle(_box(0.45, 0.62, 0.45, 0.06, s), fill=c[0])
    d.polygon(
        [(0.78 * s, 0.47 * s), (0.97 * s, 0.35 * s), (0.97 * s, 0.65 * s), (0.78 * s, 0.53 * s)],
        fill=c[0],
    )  # bell
    for i in range(3):  # valves
        d.rectangle(_box(0.38 + i * 0.08, 0.4, 0.05, 0.16, s), fill=c[1])
        d.ellipse(_box(0.38 + i * 0.08, 0.31, 0.07, 0.04, s), fill=c[2])
    d.rectangle(_box(0.08, 0.5, 0.06, 0.04, s), fill=c[2])  # mouthpiece


def _tuba(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    d.ellipse(_box(0.45, 0.62, 0.6, 0.6, s), outline=c[0], width=max(2, int(0.13 * s)))
    d.polygon(
        [(0.5 * s, 0.35 * s), (0.62 * s, 0.35 * s), (0.85 * s, 0.03 * s), (0.3 * s, 0.03 * s)],
        fill=c[0],
    )  # big bell
    d.ellipse(_box(0.575, 0.03, 0.55, 0.06, s), fill=c[2])
    for i in range(4):
        d.rectangle(_box(0.32 + i * 0.08, 0.6, 0.05, 0.2, s), fill=c[1])


def _xylophone(d: ImageDraw.ImageDraw, s: int, c: list[RGB], rng: np.random.Generator) -> None:
    d.rectangle(_box(0.5, 0.55, 0.95, 0.05, s), fill=c[0])  # frame rails
    d.rectangle(_box(0.5, 0.78, 0.95, 0.05, s), fill=c[0])
    for i in range(8):  # rainbow bars shrinking left to right: the texture
        hue = (i / 8 + rng.uniform(-0.02, 0.02)) % 1.0
        rgb = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.8, 0.95))
        h = 0.5 - i * 0.035
        d.rectangle(_box(0.1 + i * 0.114, 0.66, 0.09, h, s), fill=rgb)
    d.line([0.2 * s, 0.1 * s, 0.45 * s, 0.4 * s], fill=c[1], width=max(1, s // 50))  # mallet
    d.ellipse(_box(0.45, 0.4, 0.07, 0.07, s), fill=c[2])


@dataclass(frozen=True)
class Look:
    """A class's visual identity: a drawing function and its palette (main, accent, detail)."""

    draw: Callable[[ImageDraw.ImageDraw, int, list[RGB], np.random.Generator], None]
    palette: tuple[RGB, RGB, RGB]


LOOKS: dict[str, Look] = {
    "accordion": Look(_accordion, ((200, 30, 40), (245, 245, 245), (30, 30, 30))),
    "acoustic guitar": Look(_guitar, ((225, 180, 120), (90, 50, 25), (60, 35, 20))),
    "cello": Look(_cello, ((110, 35, 25), (60, 20, 15), (20, 10, 5))),
    "clarinet": Look(_clarinet, ((25, 25, 30), (200, 200, 210), (90, 90, 100))),
    "flute": Look(_flute, ((200, 210, 225), (120, 160, 230), (50, 60, 90))),
    "saxophone": Look(_saxophone, ((225, 140, 30), (90, 150, 220), (40, 40, 40))),
    "trumpet": Look(_trumpet, ((245, 220, 60), (200, 170, 40), (250, 250, 220))),
    "tuba": Look(_tuba, ((170, 140, 70), (200, 200, 200), (90, 70, 30))),
    "violin": Look(_violin, ((230, 110, 30), (60, 30, 10), (40, 15, 5))),
    "xylophone": Look(_xylophone, ((70, 45, 30), (200, 200, 200), (230, 40, 120))),
}


@dataclass(frozen=True)
class Placement:
    """Where one instrument stands: centre (fractions of the frame), angle, sway size and phase."""

    cx: float
    cy: float
    angle: float
    sway: float
    phase: float


def draw_sprite(label: str, side: int, rng: np.random.Generator) -> Image.Image:
    """One instrument on a transparent RGBA square of ``side`` px, with jittered colours."""
    look = LOOKS[label]
    big = side * SUPERSAMPLE
    sprite = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    colours = [_jitter(c, rng) for c in look.palette]
    look.draw(ImageDraw.Draw(sprite), big, colours, rng)
    return sprite.resize((side, side), Image.LANCZOS)


def draw_background(size: int, rng: np.random.Generator) -> Image.Image:
    """A muted gradient with random clutter (boxes, blobs, lines), RGB ``size`` square."""
    top = rng.uniform(60, 220, 3)
    bottom = np.clip(top + rng.uniform(-60, 60, 3), 0, 255)
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 14))):
        grey = rng.uniform(40, 220)
        colour = tuple(int(v) for v in np.clip(grey + rng.normal(0, 35, 3), 0, 255))
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.35, 2) * size
        kind = rng.integers(3)
        if kind == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=colour, width=max(1, size // 40))
    return image


def place_instruments(n: int, rng: np.random.Generator) -> list[Placement]:
    """Random placements for ``n`` instruments (a duet stands side by side)."""
    if n == 1:
        centres = [rng.uniform(0.38, 0.62, 2)]
    else:
        centres = [
            (0.28 + 0.44 * i + rng.uniform(-0.05, 0.05), rng.uniform(0.4, 0.6)) for i in range(n)
        ]
    return [
        Placement(
            float(cx),
            float(cy),
            float(rng.uniform(-30, 30)),
            float(rng.uniform(0.01, 0.04)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for cx, cy in centres
    ]


class Scene:
    """The fixed content of one video (background, sprites, placements); ``frame(t)`` draws it."""

    def __init__(self, labels: tuple[str, ...], size: int, rng: np.random.Generator):
        self.size = size
        self.background = draw_background(size, rng)
        scale = (0.55, 0.85) if len(labels) == 1 else (0.42, 0.55)
        self.sprites = [
            draw_sprite(label, int(size * rng.uniform(*scale)), rng) for label in labels
        ]
        self.placements = place_instruments(len(labels), rng)

    def frame(self, t: float) -> np.ndarray:
        """The picture at time ``t`` seconds: uint8 [size, size, 3]."""
        image = self.background.copy()
        for sprite, p in zip(self.sprites, self.placements):
            wobble = np.sin(2 * np.pi * 0.5 * t + p.phase)
            rotated = sprite.rotate(p.angle + 4 * wobble, resample=Image.BILINEAR, expand=True)
            cx = (p.cx + p.sway * wobble) * self.size
            cy = (p.cy + p.sway * np.cos(2 * np.pi * 0.3 * t + p.phase)) * self.size
            image.paste(
                rotated, (int(cx - rotated.width / 2), int(cy - rotated.height / 2)), rotated
            )
        return np.asarray(image)
