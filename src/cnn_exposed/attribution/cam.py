"""The class-activation-map family: Grad-CAM, Grad-CAM++, Layer-CAM and Score-CAM.

A base class gets a layer's activations ``A`` and gradients ``G = ∂score/∂A`` from the engine, then
ReLUs, upsamples and normalises; each variant only says how ``(A, G)`` become a map.
"""

from __future__ import annotations

import numpy as np

from ..engine import batch_slices
from ..explanation import normalize_maps, upsample_maps
from ..model_io import rows
from ..targets import resolve_predicted
from .base import AttributionMethod, Result


class CAMMethod(AttributionMethod):
    """Base of the CAM family. ``layer`` defaults to the last layer with a 4-D output."""

    uses_layer = True

    def cam(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """``(n, h, w, k)`` activations and gradients -> ``(n, h, w)`` map before ReLU."""
        raise NotImplementedError

    def compute(self, x, targets, images) -> Result:
        def one_batch(xb, tb):
            s, a, g, t, p = self.engine.layer_gradients(xb, tb)
            return s, self.cam(a, g).astype(np.float32), t, p

        scores, layer_maps, targets, probs = self.engine.map_batches(
            one_batch, (x, targets), self.batch_size, self.progress, self.name
        )
        raw = upsample_maps(np.maximum(layer_maps, 0.0), x.shape[1:3])
        return Result(raw, targets, scores, probs, layer_maps=layer_maps)


def _channel_sum(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_k w_k A^k for per-image channel weights ``(n, k)``."""
    return np.einsum("nhwk,nk->nhw", activations, weights)


class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(Σ_k α_k A^k)``, ``α_k`` = mean over positions of ``G^k``."""

    name = "gradcam"

    def cam(self, activations, gradients):
        return _channel_sum(activations, gradients.mean(axis=(1, 2)))


class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhay et al. 2018), in the closed form of the exponential score.

    ``α_ij = G² / (2G² + Σ_ab A_ab G³)``, channel weights ``w_k = Σ_ij α_ij ReLU(G_ij)``, map
    ``ReLU(Σ_k w_k A^k)``. With ``normalize_alphas`` (default, as in the authors' code and tf-keras-vis)
    each channel's ``α`` are divided by their sum over positions.
    """

    name = "gradcam++"

    def __init__(self, model, *, normalize_alphas: bool = True, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.normalize_alphas = bool(normalize_alphas)

    def options(self):
        return {"normalize_alphas": self.normalize_alphas}

    def cam(self, activations, gradients):
        g2 = np.square(gradients)
        g3 = g2 * gradients
        denom = 2.0 * g2 + activations.sum(axis=(1, 2), keepdims=True) * g3
        alphas = np.divide(g2, denom, out=np.zeros_like(g2), where=(g2 != 0) & (denom != 0))
        if self.normalize_alphas:
            norm = alphas.sum(axis=(1, 2), keepdims=True)
            alphas = np.divide(alphas, norm, out=np.zeros_like(alphas), where=norm != 0)
        weights = (alphas * np.maximum(gradients, 0.0)).sum(axis=(1, 2))
        return _channel_sum(activations, weights)


class LayerCAM(CAMMethod):
    """Layer-CAM (Jiang et al. 2021): ``ReLU(Σ_k ReLU(G^k) ⊙ A^k)`` position by position."""

    name = "layercam"

    def cam(self, activations, gradients):
        return (np.maximum(gradients, 0.0) * activations).sum(axis=-1)


class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al. 2020): channels weighted by the score of the input masked with them.

    Each channel ``A^k`` is upsampled to the input size, min–max normalised to [0, 1] and multiplied
    into the input; the target's score on that masked input (its probability by default, as in the
    paper) gives ``s_k``, and the map is ``ReLU(Σ_k softmax(s)_k A^k)``. The masked copies of all
    images and channels are packed into batches of ``batch_size``.

    Parameters
    ----------
    channels : int or None
        Keep only the ``channels`` channels of largest spatial variance per image (Faster-Score-CAM);
        None uses all of them (one forward pass per channel).
    """

    name = "scorecam"
    default_score = "probability"

    def __init__(self, model, *, channels: int | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if channels is not None and int(channels) < 1:
            raise ValueError(f"channels must be a positive number of channels or None, got {channels}.")
        self.channels = None if channels is None else int(channels)

    def options(self):
        return {"channels": self.channels}

    def _selected(self, activations: np.ndarray) -> np.ndarray:
        """Indices of the channels to score for each image, ``(n, k')``."""
        k = activations.shape[-1]
        if self.channels is None or self.channels >= k:
            return np.tile(np.arange(k), (len(activations), 1))
        var = activations.reshape(len(activations), -1, k).var(axis=1)
        return np.argsort(-var, axis=1, kind="stable")[:, : self.channels]

    def compute(self, x, targets, images) -> Result:
        acts, outputs, probs = self.engine.map_batches(self.engine.activations, (x,), self.batch_size)
        targets = resolve_predicted(targets, outputs)
        scores = outputs[np.arange(len(x)), targets]
        chosen = self._selected(acts)
        n_ch = chosen.shape[1]
        channel_scores = np.empty(chosen.shape, dtype=np.float32)
        size = x.shape[1:3]
        pairs = len(x) * n_ch
        for s in batch_slices(pairs, self.batch_size, progress=self.progress, desc=self.name):
            idx = np.arange(s.start, s.stop)
            img, slot = idx // n_ch, idx % n_ch
            small = acts[img, :, :, chosen[img, slot]]  # (b, h, w)
            masks = normalize_maps(upsample_maps(small, size))
            masked = x[img] * masks[..., None]
            with rows(img):  # each masked copy with its image's side inputs
                channel_scores[img, slot] = self.engine.scores(masked, targets[img])
        w = np.exp(channel_scores - channel_scores.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        picked = np.take_along_axis(acts, chosen[:, None, None, :], axis=-1)
        layer_maps = _channel_sum(picked, w).astype(np.float32)
        raw = upsample_maps(np.maximum(layer_maps, 0.0), size)
        return Result(raw, targets, scores, probs, layer_maps=layer_maps, extras={"channel_scores": channel_scores})
