"""Synthetic pictures that are not a bicycle or a motorcycle, for the monitoring and
"not a vehicle" benchmarks (and tests): uint8 32 x 32 x 3 arrays, one generator per kind.

    noise      uniform random pixels
    flat       one flat colour (sometimes with a faint gradient)
    scrambled  a real photo cut into 8 x 8 patches, shuffled
    blur       a real photo under a heavy Gaussian blur (radius 3-5 px at 32 x 32)
    texture    stripes, checkerboards and smooth random fields: other textures
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

KINDS = ("noise", "flat", "scrambled", "blur", "texture")


def noise(rng: np.random.Generator, _photo: np.ndarray | None = None) -> np.ndarray:
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def flat(rng: np.random.Generator, _photo: np.ndarray | None = None) -> np.ndarray:
    colour = rng.integers(0, 256, 3)
    ramp = np.linspace(-1, 1, 32)[None, :, None] * rng.uniform(0, 12)
    return np.clip(np.broadcast_to(colour, (32, 32, 3)) + ramp, 0, 255).astype(np.uint8)


def scrambled(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    patches = [photo[r:r + 8, c:c + 8] for r in range(0, 32, 8) for c in range(0, 32, 8)]
    order = rng.permutation(len(patches))
    rows = [np.concatenate([patches[order[r * 4 + c]] for c in range(4)], axis=1)
            for r in range(4)]
    return np.concatenate(rows, axis=0)


def blur(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    radius = rng.uniform(3, 5)
    return np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(radius)))


def texture(rng: np.random.Generator, _photo: np.ndarray | None = None) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32].astype(float)
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 10)
        field = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    elif kind == 1:  # checkerboard
        size = int(rng.integers(2, 8))
        field = (((x // size) + (y // size)) % 2) * 2 - 1
    else:  # a smooth random field (clouds, marble)
        small = rng.normal(size=(4, 4))
        field = np.asarray(Image.fromarray(small.astype(np.float32)).resize(
            (32, 32), Image.Resampling.BICUBIC))
        field = field / (np.abs(field).max() + 1e-9)
    low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    mix = (field[..., None] + 1) / 2
    return (low * (1 - mix) + high * mix).astype(np.uint8)


GENERATORS = {"noise": noise, "flat": flat, "scrambled": scrambled, "blur": blur,
              "texture": texture}


def make(kind: str, count: int, photos: np.ndarray, seed: int = 0) -> np.ndarray:
    """`count` pictures of one kind; scrambled and blur are made from `photos` (N x 32 x 32 x 3)."""
    rng = np.random.default_rng(seed)
    generator = GENERATORS[kind]
    return np.stack([generator(rng, photos[rng.integers(0, len(photos))])
                     for _ in range(count)]).astype(np.uint8)
