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

    As Lucid: parameters are the half spectrum of a real image, ``(2, n, 3, size, size // 2 + 1)`` (real and
    imaginary parts, each one contiguous block so that splitting them costs no gather), scaled by
    ``sqrt(h w)`` against the inverse FFT's ``1 / (h w)``, then ``/ 4``; the image is the inverse real FFT,
    then decorrelated colour, then a sigmoid.
    """

    name = "fourier"

    def __init__(self, size: int, sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True) -> None:
        self.size, self.sd, self.decorrelate = int(size), float(sd), bool(decorrelate)
        fy = np.fft.fftfreq(self.size)[:, None]
        fx = np.fft.rfftfreq(self.size)[None, :]
        freqs = np.sqrt(fx**2 + fy**2)
        scale = 1.0 / np.maximum(freqs, 1.0 / self.size) ** decay_power
        self.scale = (scale * self.size / 4.0).astype(np.float32)

    def init(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, self.sd, (2, n, 3) + self.scale.shape).astype(np.float32)

    def to_image(self, params):
        from ..engine import irfft2

        real, imag = ops.unstack(params * self.scale, num=2, axis=0)
        image = irfft2(real, imag, (self.size, self.size))  # (n, 3, size, size)
        n = image.shape[0]
        mix = COLOR_DECORRELATION if self.decorrelate else np.eye(3, dtype=np.float32)
        # colour mixing and channels-last in one contraction (a separate transpose costs as much again)
        image = ops.einsum("nci,dc->nid", ops.reshape(image, (n, 3, -1)), ops.convert_to_tensor(mix))
        return ops.sigmoid(ops.reshape(image, (n, self.size, self.size, 3)))


PARAMETERISATIONS = {"pixels": PixelImage, "fourier": FourierImage}


def make_parameterisation(kind, size: int):
    """A parameterisation by name (``"fourier"`` or ``"pixels"``) or an object with init/to_image."""
    if hasattr(kind, "init") and hasattr(kind, "to_image"):
        return kind
    if kind not in PARAMETERISATIONS:
        from ..errors import CnnExposedError

        raise CnnExposedError(f"parameterisation must be one of {list(PARAMETERISATIONS)}, got {kind!r}.")
    return PARAMETERISATIONS[kind](size)
