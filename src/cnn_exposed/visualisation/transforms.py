"""Random transformations applied at every step (robustness turns noise into patterns), and regularisers.

The transformations of one step are drawn in NumPy from a seeded generator and passed to the compiled step
as one affine matrix per image, so a run is reproducible and the step is traced once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from keras import ops


@dataclass
class Transforms:
    """Lucid's standard robustness transforms, composed into one affine map per image.

    Applied in order: pad ``pad`` px with grey, jitter up to ``jitter`` px, scale by a factor from
    ``scales``, rotate by an angle (degrees) from ``angles``, jitter up to ``jitter2`` px; the centre
    ``size × size`` is then cropped back out. ``Transforms.none()`` disables them all.
    """

    pad: int = 12
    jitter: int = 8
    scales: tuple = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple = tuple(range(-10, 11)) + (0,) * 5
    jitter2: int = 4

    @classmethod
    def none(cls) -> Transforms:
        return cls(pad=0, jitter=0, scales=(1.0,), angles=(0,), jitter2=0)

    @classmethod
    def standard(cls, size: int) -> Transforms:
        """Lucid's settings (tuned at 128 px and above); shifts shrink in proportion below 128 px, where
        12 px of jitter would move a neuron's receptive field right out of place."""
        f = min(1.0, size / 128.0)
        return cls(pad=round(12 * f), jitter=round(8 * f), jitter2=round(4 * f))

    def sample(self, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, 8)`` projective matrices mapping each output pixel to the input pixel it samples.

        They describe pad, transform and crop in one: an output pixel ``w`` of the cropped result is pixel
        ``A (w + p) + d`` of the padded image, which is pixel ``A w + d + (A - I) p`` of the unpadded one,
        and the padding's grey is the transform's fill value. So the step transforms ``size × size``
        images, not padded ones, and slices nothing (whose gradient is a full-size scatter).
        """
        full = size + 2 * self.pad
        centre = (full - 1) / 2.0
        out = np.zeros((n, 8), dtype=np.float32)
        for i in range(n):
            shift = rng.integers(-self.jitter, self.jitter + 1, 2) + rng.integers(-self.jitter2, self.jitter2 + 1, 2)
            s = float(rng.choice(self.scales))
            a = np.deg2rad(float(rng.choice(self.angles)))
            forward = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            inverse = np.linalg.inv(forward)
            c = np.array([centre, centre])
            d = c - inverse @ (c + shift)
            d = d + (inverse - np.eye(2)) @ np.array([self.pad, self.pad])
            out[i] = [inverse[0, 0], inverse[0, 1], d[0], inverse[1, 0], inverse[1, 1], d[1], 0.0, 0.0]
        return out

    def apply(self, images, matrices, size: int):
        """Pad (grey), transform and crop a ``(n, size, size, 3)`` batch in [0, 1], as one resampling."""
        return ops.image.affine_transform(
            images, matrices, interpolation="bilinear", fill_mode="constant", fill_value=0.5
        )


def total_variation(images):
    """Mean absolute difference between neighbouring pixels, per image."""
    dy = ops.abs(images[:, 1:, :, :] - images[:, :-1, :, :])
    dx = ops.abs(images[:, :, 1:, :] - images[:, :, :-1, :])
    return ops.mean(dy, axis=(1, 2, 3)) + ops.mean(dx, axis=(1, 2, 3))


def l1(images):
    """Mean absolute deviation from grey, per image."""
    return ops.mean(ops.abs(images - 0.5), axis=(1, 2, 3))


def l2(images):
    """Mean squared deviation from grey, per image."""
    return ops.mean(ops.square(images - 0.5), axis=(1, 2, 3))


def blur(images):
    """Mean squared difference between the image and its 3×3 box blur, per image (penalises fine detail)."""
    blurred = ops.average_pool(images, 3, strides=1, padding="same")
    return ops.mean(ops.square(images - blurred), axis=(1, 2, 3))


REGULARISERS = {"tv": total_variation, "l1": l1, "l2": l2, "blur": blur}
