"""How the image is represented while it is optimised: plain pixels, or a Fourier basis with decorrelated
colour (Olah et al. 2017), both squashed by a sigmoid into valid [0, 1] pixels.

Images have the model's channel count: 3 for RGB models (colours decorrelated with ImageNet's statistics), 1
for grayscale models, any other count with its channels independent."""

from __future__ import annotations

import numpy as np
from keras import ops

# The square root of ImageNet's colour correlation matrix (Lucid), normalised by its largest column norm.
_COLOR_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_DECORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


class PixelImage:
    """Each pixel's colour is a free parameter: ``image = sigmoid(p)``. Initial ``p ~ N(0, sd²)``."""

    name = "pixels"

    def __init__(self, size: int, sd: float = 0.01, channels: int = 3) -> None:
        self.size, self.sd, self.channels = int(size), float(sd), int(channels)

    def init(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, self.sd, (n, self.size, self.size, self.channels)).astype(np.float32)

    def to_image(self, params):
        return ops.sigmoid(params)


class FourierImage:
    """The image's spectrum is the parameter, scaled by ``1 / max(|f|, 1/size) ** decay`` so that low
    frequencies are cheap and high ones expensive; colours pass through the decorrelation matrix.

    As Lucid: parameters are the half spectrum of a real image, ``(2, n, C, size, size // 2 + 1)`` (real and
    imaginary parts, each one contiguous block so that splitting them costs no gather), scaled by
    ``sqrt(h w)`` against the inverse FFT's ``1 / (h w)``, then ``/ 4``; the image is the inverse real FFT,
    then decorrelated colour (RGB only), then a sigmoid.
    """

    name = "fourier"

    def __init__(
        self, size: int, sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True, channels: int = 3
    ) -> None:
        self.size, self.sd, self.channels = int(size), float(sd), int(channels)
        self.decorrelate = bool(decorrelate) and self.channels == 3  # ImageNet's colour statistics are RGB
        fy = np.fft.fftfreq(self.size)[:, None]
        fx = np.fft.rfftfreq(self.size)[None, :]
        freqs = np.sqrt(fx**2 + fy**2)
        scale = 1.0 / np.maximum(freqs, 1.0 / self.size) ** decay_power
        self.scale = (scale * self.size / 4.0).astype(np.float32)

    def init(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, self.sd, (2, n, self.channels) + self.scale.shape).astype(np.float32)

    def to_image(self, params):
        from ..backend import irfft2

        real, imag = ops.unstack(params * self.scale, num=2, axis=0)
        image = irfft2(real, imag, (self.size, self.size))  # (n, C, size, size)
        n, c = image.shape[0], self.channels
        mix = COLOR_DECORRELATION if self.decorrelate else np.eye(c, dtype=np.float32)
        # colour mixing and channels-last in one contraction (a separate transpose costs as much again)
        image = ops.einsum("nci,dc->nid", ops.reshape(image, (n, c, -1)), ops.convert_to_tensor(mix))
        return ops.sigmoid(ops.reshape(image, (n, self.size, self.size, c)))


PARAMETERISATIONS = {"pixels": PixelImage, "fourier": FourierImage}


def make_parameterisation(kind, size: int, channels: int = 3):
    """A parameterisation by name (``"fourier"`` or ``"pixels"``) or an object with init/to_image."""
    if hasattr(kind, "init") and hasattr(kind, "to_image"):
        return kind
    if kind not in PARAMETERISATIONS:
        from ..errors import CnnExposedError

        raise CnnExposedError(f"parameterisation must be one of {list(PARAMETERISATIONS)}, got {kind!r}.")
    return PARAMETERISATIONS[kind](size, channels=channels)
