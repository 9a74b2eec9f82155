"""How the image is represented while it is optimised: plain pixels, or a Fourier basis with decorrelated
colour (Olah et al. 2017), both squashed by a sigmoid into valid [0, 1] RGB."""

from __future__ import annotations

import numpy as np
from keras import ops

# The square root of ImageNet's colour correlation matrix (Lucid), normalised by its largest column norm.
_COLOR_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_DECORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


class PixelImage:
    """Each pixel's colour is a free parameter: ``image = sigmoid(p)``. Initial ``p ~ N(0, sd²)``."""

    name = "pixels"

    def __init__(self, size: int, sd: float = 0.01) -> None:
        self.size, self.sd = int(size), float(sd)

    def init(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, self.sd, (n, self.size, self.size, 3)).astype(np.float32)

    def to_image(self, params):
        return ops.sigmoid(params)


class FourierImage:
    """The image's spectrum is the parameter, scaled by ``1 / max(|f|, 1/size) ** decay`` so that low
    frequencies are cheap and high ones expensive; colours pass through the decorrelation matrix.

    Parameters are ``(n, 3, size, size, 2)`` (real and imaginary parts); the image is the real part of the
    inverse FFT, then decorrelated colour, then a sigmoid.
    """

    name = "fourier"

    def __init__(self, size: int, sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True) -> None:
        self.size, self.sd, self.decorrelate = int(size), float(sd), bool(decorrelate)
        fy = np.fft.fftfreq(self.size)[:, None]
        fx = np.fft.fftfreq(self.size)[None, :]
        freqs = np.sqrt(fx**2 + fy**2)
        scale = 1.0 / np.maximum(freqs, 1.0 / self.size) ** decay_power
        # As Lucid: times sqrt(h w) against the inverse FFT's 1 / (h w), then / 4. (The real part of a
        # full-spectrum ifft2 equals an irfft2 whose coefficient pairs are optimised together, so the
        # amplitudes match Lucid's once optimisation has started.)
        self.scale = (scale * self.size / 4.0).astype(np.float32)

    def init(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, self.sd, (n, 3, self.size, self.size, 2)).astype(np.float32)

    def to_image(self, params):
        real = params[..., 0] * self.scale
        imag = params[..., 1] * self.scale
        image, _ = ops.ifft2((real, imag))  # (n, 3, size, size)
        image = ops.transpose(image, (0, 2, 3, 1))
        if self.decorrelate:
            image = ops.matmul(image, ops.convert_to_tensor(COLOR_DECORRELATION.T))
        return ops.sigmoid(image)


PARAMETERISATIONS = {"pixels": PixelImage, "fourier": FourierImage}


def make_parameterisation(kind, size: int):
    """A parameterisation by name (``"fourier"`` or ``"pixels"``) or an object with init/to_image."""
    if hasattr(kind, "init") and hasattr(kind, "to_image"):
        return kind
    if kind not in PARAMETERISATIONS:
        from ..errors import CnnExposedError

        raise CnnExposedError(f"parameterisation must be one of {list(PARAMETERISATIONS)}, got {kind!r}.")
    return PARAMETERISATIONS[kind](size)
