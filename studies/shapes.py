"""Synthetic image-caption data for the captioning study (slide 19): scenes of one or two
coloured shapes, each image with every caption that describes it.

    scenes(n, size=32, two_objects=0.7, noise=0.08, seed=0) -> Scenes
        images (n, 3, size, size) uint8, refs[i]: the reference captions of image i

A scene holds one or two shapes; each shape is a circle, square or triangle, red, green,
blue or yellow, small or large. A single shape reads "a large red circle"; two read
"a large red circle left of a small blue square" or, just as true, "a small blue square
right of a large red circle" (above / below when the vertical offset is the larger). So an
image has one or two references, as Flickr8k's images have five: BLEU takes them all, and
training draws one at random each time. 24 shapes and 4 relations make 1,176 distinct scenes (24 single, 1,152 pairs),
and a training set can be made to leave one shape out (`exclude`, e.g. every large yellow
triangle) while the validation set keeps it: a new combination of words the decoder knows,
which it can only caption by reading the image, not by recalling a training caption.

The lecture's Flickr8k needs a download this project's machines cannot make and a licence
form; these scenes are generated from a seed, byte-identical on every machine, in about a
second for 10,000 images. Pixels: a dark background, the shapes in their colour with a
+-20 jitter per channel, then Gaussian noise of `noise` * 255 on every pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SIZES = ("small", "large")
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MIN_SIZE, MAX_SIZE = 24, 128
MAX_TRIES = 10_000  # placements per scene (two large shapes in 32 pixels: about 1 in 22 fits)


@dataclass
class Scenes:
    images: np.ndarray            # (n, 3, size, size) uint8
    refs: list[list[str]]         # the captions of each image (1 or 2)
    objects: list[list[dict]]     # shape, colour, size, centre (x, y), radius of each object


def _radius(size: int, word: str) -> float:
    return size * (0.11 if word == "small" else 0.2)


def _mask(kind: str, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if kind == "square":
        h = r * 0.85
        return (abs(xx - cx) <= h) & (abs(yy - cy) <= h)
    # triangle pointing up: apex at (cx, cy - r), base at y = cy + r * 0.7
    top, base = cy - r, cy + r * 0.7
    half = (yy - top) / (base - top) * r
    return (yy >= top) & (yy <= base) & (abs(xx - cx) <= half)


def _phrase(o: dict) -> str:
    return f"a {o['size']} {o['colour']} {o['shape']}"


def relation(a: dict, b: dict) -> str:
    """Where a stands from b: the axis with the larger offset decides (image y grows downwards)."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def captions(objs: list[dict]) -> list[str]:
    if len(objs) == 1:
        return [_phrase(objs[0])]
    a, b = objs
    rel = relation(a, b)
    return [f"{_phrase(a)} {rel} {_phrase(b)}", f"{_phrase(b)} {RELATIONS[rel]} {_phrase(a)}"]


def _place(rng: np.random.Generator, size: int, radii: list[float]) -> list[tuple[float, float]] | None:
    """Centres inside the image, apart, and with one offset clearly larger (relation not ambiguous)."""
    pts = [(rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)) for r in radii]
    if len(pts) == 2:
        (x1, y1), (x2, y2) = pts
        dx, dy = abs(x1 - x2), abs(y1 - y2)
        if np.hypot(dx, dy) < radii[0] + radii[1] + 2 or max(dx, dy) < 1.5 * min(dx, dy) + 2:
            return None
    return pts


def check_holdout(holdout: str | None) -> None:
    """A held-out shape is "<size> <colour> <shape>", e.g. "large yellow triangle"."""
    if holdout is None:
        return
    parts = holdout.split()
    if len(parts) != 3 or parts[0] not in SIZES or parts[1] not in COLOURS or parts[2] not in SHAPES:
        raise UserError(f"studies.captioning.holdout: {holdout!r} is not '<size> <colour> <shape>' "
                        f"(size: {'/'.join(SIZES)}, colour: {'/'.join(COLOURS)}, shape: {'/'.join(SHAPES)}); or null")


def scenes(n: int, size: int = 32, two_objects: float = 0.7, noise: float = 0.08, seed: int = 0,
           exclude: str | None = None) -> Scenes:
    """`exclude` ("large yellow triangle"): no scene holds that shape (a training set that never shows it)."""
    check_holdout(exclude)
    if n < 1:
        raise UserError(f"captioning: the number of images must be at least 1, got {n}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"studies.captioning.image_size: {MIN_SIZE} to {MAX_SIZE} pixels (two shapes side by side; "
                        f"the scenes are held in memory), got {size}")
    if not 0 <= two_objects <= 1:
        raise UserError(f"studies.captioning.two_objects: a share in [0, 1], got {two_objects}")
    if not 0 <= noise <= 1:
        raise UserError(f"studies.captioning.noise: a share of the pixel range in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, 3, size, size), np.uint8)
    refs, objects = [], []
    for i in range(n):
        k = 2 if rng.random() < two_objects else 1
        while True:  # the shapes first (each of the 24 equally likely, but the excluded one)...
            objs = [{"shape": SHAPES[rng.integers(3)], "colour": list(COLOURS)[rng.integers(4)], "size": SIZES[rng.integers(2)]}
                    for _ in range(k)]
            if not (exclude and any(f"{o['size']} {o['colour']} {o['shape']}" == exclude for o in objs)):
                break
        radii = [_radius(size, o["size"]) for o in objs]
        for _ in range(MAX_TRIES):  # ...then their places: redrawing the shapes would favour the small ones
            pts = _place(rng, size, radii)
            if pts is not None:
                break
        else:
            raise UserError(f"studies.captioning.image_size: {size} pixels leave no room for two large shapes apart; raise it")
        img = np.full((size, size, 3), 25.0, np.float32)
        for o, r, (x, y) in zip(objs, radii, pts):
            o.update(x=float(x), y=float(y), r=float(r))
            rgb = np.array(COLOURS[o["colour"]], np.float32) + rng.uniform(-20, 20, 3)
            img[_mask(o["shape"], x, y, r, yy, xx)] = rgb
        img += rng.normal(0, noise * 255, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        refs.append(captions(objs))
        objects.append(objs)
    return Scenes(images, refs, objects)
