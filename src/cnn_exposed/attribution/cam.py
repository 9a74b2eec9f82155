"""The class-activation-map family: one mechanism, ten variants.

:class:`CAMMethod` is the mechanism. For each batch of images one compiled pass records the chosen layer's
activations ``A`` (b, h, w, k) and, for the variants that need them, their gradients ``G = ∂score/∂A`` (the
gradient-free variants run a forward pass only); the variant turns them into a map at the layer's resolution
(``layer_maps``, before any ReLU); the base ReLUs it and upsamples it bilinearly to the input (``raw_maps``), and
the explanation normalises it to [0, 1]. A variant contributes only what differs:

- channel weights ``w`` (b, k), map ``Σ_k w_k A^k``: Grad-CAM, Grad-CAM++, XGrad-CAM and FEM from ``A`` and
  ``G``; Score-CAM (inputs masked by each channel) and Ablation-CAM (each channel zeroed) from extra forward
  passes, packed into batches of ``batch_size``;
- per-position weights (b, h, w, k), map ``Σ_k W^k ⊙ A^k``: Layer-CAM, HiResCAM;
- a projection: Eigen-CAM (the first principal component of ``A``), EigenGrad-CAM (of ``G ⊙ A``).

Channel-weight variants report their weights in ``Explanation.extras["channel_weights"]`` (N, k).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..engine import batch_slices
from ..explanation import normalize_maps, upsample_maps
from ..model_io import rows
from ..targets import resolve_predicted
from .base import AttributionMethod, Result


@dataclass
class LayerState:
    """One batch of images as a CAM variant sees them."""

    x: np.ndarray  # (b, H, W, C) the model inputs
    targets: np.ndarray  # (b,) the explained classes, resolved
    scores: np.ndarray  # (b,) their scores
    activations: np.ndarray  # (b, h, w, k) the layer's output A
    gradients: np.ndarray | None  # (b, h, w, k) ∂score/∂A; None for a gradient-free variant
    extras: dict = field(default_factory=dict)  # per-image arrays the variant reports, joined over batches


class CAMMethod(AttributionMethod):
    """Base of the CAM family. ``layer`` defaults to the last layer with a 4-D output.

    A variant sets ``uses_gradients`` (False: a forward pass only) and overrides :meth:`weights` (per channel
    or per position) or, for a projection, :meth:`cam`.
    """

    uses_layer = True
    uses_gradients = True

    def weights(self, state: LayerState) -> np.ndarray:
        """Channel weights ``(b, k)`` or per-position weights ``(b, h, w, k)``."""
        raise NotImplementedError

    def cam(self, state: LayerState) -> np.ndarray:
        """The map before ReLU ``(b, h, w)``: ``Σ_k w_k A^k`` (channel weights) or ``Σ_k W^k ⊙ A^k``."""
        w = self.weights(state)
        if w.ndim == 2:
            state.extras["channel_weights"] = w.astype(np.float32)
            return np.einsum("nhwk,nk->nhw", state.activations, w)
        return (w * state.activations).sum(axis=-1)

    def layer_state(self, x: np.ndarray, targets: np.ndarray) -> tuple[LayerState, np.ndarray]:
        """One compiled pass on a batch: its :class:`LayerState` and the probabilities ``(b, K)``."""
        if self.uses_gradients:
            s, a, g, t, probs = self.engine.layer_gradients(x, targets)
            return LayerState(x, t, s, a, g), probs
        a, outputs, probs = self.engine.activations(x)
        t = resolve_predicted(targets, outputs)
        return LayerState(x, t, outputs[np.arange(len(x)), t], a, None), probs

    def compute(self, x, targets, images) -> Result:
        extras: list[dict] = []

        def one_batch(xb, tb):
            state, probs = self.layer_state(xb, tb)
            layer_map = self.cam(state).astype(np.float32)
            extras.append(state.extras)
            return state.scores, layer_map, state.targets, probs

        scores, layer_maps, targets, probs = self.engine.map_batches(
            one_batch, (x, targets), self.batch_size, self.progress, self.name
        )
        joined = {key: np.concatenate([e[key] for e in extras]) for key in extras[0]}
        raw = upsample_maps(np.maximum(layer_maps, 0.0), x.shape[1:3])
        return Result(raw, targets, scores, probs, layer_maps=layer_maps, extras=joined)


# ---------------------------------------------------------------------------------------------- helpers
def top_channels(activations: np.ndarray, count: int | None) -> np.ndarray:
    """Indices ``(b, count)`` of each image's ``count`` channels of largest spatial variance (ties: lower
    index first); all channels in order when ``count`` is None or not smaller than ``k``."""
    k = activations.shape[-1]
    if count is None or count >= k:
        return np.tile(np.arange(k), (len(activations), 1))
    var = activations.reshape(len(activations), -1, k).var(axis=1)
    return np.argsort(-var, axis=1, kind="stable")[:, :count]


def first_component(values: np.ndarray) -> np.ndarray:
    """Each image's ``(h, w, k)`` values, centred per channel over positions, projected on their first right
    singular vector: ``(b, h, w)``, its sign chosen so that its largest-magnitude value is positive (an SVD's sign
    is arbitrary, and the ReLU that follows would wipe an inverted map).

    The projection ``C v₁ = σ₁ u₁`` of the centred ``C`` (hw × k) is read off the eigendecomposition of the
    smaller of its two Gram matrices (``C Cᵀ`` or ``Cᵀ C``, float64), batched over images: the thin SVD's
    vector, 3-5x faster than ``np.linalg.svd`` at the usual last-layer shapes, and never the hw × hw ``U``
    of a full SVD when ``k`` is the smaller side."""
    b, h, w, k = values.shape
    c = values.reshape(b, h * w, k).astype(np.float64)
    c -= c.mean(axis=1, keepdims=True)
    if h * w <= k:
        eigvals, eigvecs = np.linalg.eigh(c @ c.transpose(0, 2, 1))  # ascending: the last is σ₁², u₁
        proj = eigvecs[:, :, -1] * np.sqrt(np.maximum(eigvals[:, -1:], 0.0))
    else:
        _, eigvecs = np.linalg.eigh(c.transpose(0, 2, 1) @ c)  # the last is v₁
        proj = np.einsum("npk,nk->np", c, eigvecs[:, :, -1])
    peak = np.take_along_axis(proj, np.abs(proj).argmax(axis=1)[:, None], axis=1)
    return (proj * np.where(peak < 0, -1.0, 1.0)).reshape(b, h, w).astype(np.float32)


def scatter_weights(chosen: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """``(b, k)`` weights: ``values`` (b, k') at channels ``chosen`` (b, k'), 0 elsewhere."""
    w = np.zeros((len(chosen), k), np.float32)
    np.put_along_axis(w, chosen, values.astype(np.float32), axis=1)
    return w


class ChannelScoring(CAMMethod):
    """A variant whose channel weights come from forward passes, one per (image, channel) pair, packed into
    batches of ``batch_size``; ``channels`` keeps the top-N channels by spatial variance (the others weigh 0)."""

    uses_gradients = False

    def __init__(self, model, *, channels: int | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if channels is not None and int(channels) < 1:
            raise ValueError(f"channels must be a positive number of channels or None, got {channels}.")
        self.channels = None if channels is None else int(channels)

    def options(self):
        return {"channels": self.channels}

    def score_pairs(self, state: LayerState, chosen: np.ndarray, score: Callable) -> np.ndarray:
        """``(b, k')`` scores: ``score(img, channel)`` on packed (image, channel) pairs (``img`` indexes the
        batch), at most ``batch_size`` pairs a call."""
        n_ch = chosen.shape[1]
        out = np.empty(chosen.shape, dtype=np.float32)
        for s in batch_slices(len(chosen) * n_ch, self.batch_size, progress=self.progress, desc=self.name):
            idx = np.arange(s.start, s.stop)
            img, slot = idx // n_ch, idx % n_ch
            out[img, slot] = score(img, chosen[img, slot])
        return out


# --------------------------------------------------------------------------------------------- variants
class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(Σ_k α_k A^k)``, ``α_k`` = mean over positions of ``G^k``."""

    name = "gradcam"

    def weights(self, state):
        return state.gradients.mean(axis=(1, 2))


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

    def weights(self, state):
        activations, gradients = state.activations, state.gradients
        g2 = np.square(gradients)
        g3 = g2 * gradients
        denom = 2.0 * g2 + activations.sum(axis=(1, 2), keepdims=True) * g3
        alphas = np.divide(g2, denom, out=np.zeros_like(g2), where=(g2 != 0) & (denom != 0))
        if self.normalize_alphas:
            norm = alphas.sum(axis=(1, 2), keepdims=True)
            alphas = np.divide(alphas, norm, out=np.zeros_like(alphas), where=norm != 0)
        return (alphas * np.maximum(gradients, 0.0)).sum(axis=(1, 2))


class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al. 2020): ``w_k = Σ_ij A^k_ij G^k_ij / (Σ_ab A^k_ab + eps)``, map ``ReLU(Σ_k w_k A^k)``.

    ``eps = 1e-7`` as pytorch-grad-cam (a channel whose activations sum to about 0, possible after batch norm,
    still gets a large weight).
    """

    name = "xgradcam"
    eps = 1e-7

    def weights(self, state):
        a = state.activations
        return (a * state.gradients).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + self.eps)


class FEM(CAMMethod):
    """FEM, feature explanation method (Fuad et al. 2020), gradient-free: a channel's weight is the fraction of
    its positions above ``μ_k + k σ_k`` (its mean plus ``k`` population standard deviations over positions,
    strictly above, as pytorch-grad-cam), map ``ReLU(Σ_k w_k A^k)``. Class-agnostic: the target only sets which
    score is reported."""

    name = "fem"
    uses_gradients = False

    def __init__(self, model, *, k: float = 2.0, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.k = float(k)

    def options(self):
        return {"k": self.k}

    def weights(self, state):
        a = state.activations
        threshold = a.mean(axis=(1, 2), keepdims=True) + self.k * a.std(axis=(1, 2), keepdims=True)
        return (a > threshold).mean(axis=(1, 2))


class LayerCAM(CAMMethod):
    """Layer-CAM (Jiang et al. 2021): ``ReLU(Σ_k ReLU(G^k) ⊙ A^k)`` position by position."""

    name = "layercam"

    def weights(self, state):
        return np.maximum(state.gradients, 0.0)


class HiResCAM(CAMMethod):
    """HiResCAM (Draelos & Carin 2020): ``ReLU(Σ_k G^k ⊙ A^k)`` position by position, no averaging of gradients.

    On a head of global average pooling and a dense layer, ``G^k_ij = W_kc / (h w)`` and the layer map (before
    ReLU, ``layer_maps``) sums over positions to the class logit minus its bias: each position's share of it.
    """

    name = "hirescam"

    def weights(self, state):
        return state.gradients


class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin 2020), gradient-free and class-agnostic: the activations ``(h w, k)``, centred
    per channel over positions (as pytorch-grad-cam), projected on their first right singular vector; sign fixed
    so that the map's largest-magnitude value is positive (pytorch-grad-cam's sign-correcting variant does so, its
    plain one does not, and can return an inverted map the ReLU wipes out). One forward pass and, per image, the
    first singular vector (:func:`first_component`)."""

    name = "eigencam"
    uses_gradients = False

    def cam(self, state):
        return first_component(state.activations)


class EigenGradCAM(CAMMethod):
    """EigenGrad-CAM (pytorch-grad-cam's, no paper): Eigen-CAM's projection of ``G ⊙ A``, so class-specific."""

    name = "eigengradcam"

    def cam(self, state):
        return first_component(state.gradients * state.activations)


class ScoreCAM(ChannelScoring):
    """Score-CAM (Wang et al. 2020): channels weighted by the score of the input masked with them.

    Each channel ``A^k`` is upsampled to the input size, min–max normalised to [0, 1] and multiplied
    into the input; the target's score on that masked input (its probability by default, as in the
    paper) gives ``s_k``, and the map is ``ReLU(Σ_k softmax(s)_k A^k)``. The masked copies of all
    images and channels are packed into batches of ``batch_size``.

    Parameters
    ----------
    channels : int or None
        Keep only the ``channels`` channels of largest spatial variance per image (Faster-Score-CAM; the others
        weigh 0); None uses all of them (one forward pass per channel).
    """

    name = "scorecam"
    default_score = "probability"

    def weights(self, state):
        acts, size = state.activations, state.x.shape[1:3]
        chosen = top_channels(acts, self.channels)

        def masked_score(img, channel):
            masks = normalize_maps(upsample_maps(acts[img, :, :, channel], size))
            with rows(img):  # each masked copy with its image's side inputs
                return self.engine.scores(state.x[img] * masks[..., None], state.targets[img])

        scores = self.score_pairs(state, chosen, masked_score)
        state.extras["channel_scores"] = scores
        w = np.exp(scores - scores.max(axis=1, keepdims=True))
        return scatter_weights(chosen, w / w.sum(axis=1, keepdims=True), acts.shape[-1])


class AblationCAM(ChannelScoring):
    """Ablation-CAM (Desai & Ramaswamy 2020): a channel's weight is the score's drop when it is zeroed.

    ``w_k = (y_c − y_c^{A^k=0}) / |y_c|``, map ``ReLU(Σ_k w_k A^k)``. The paper divides by ``y_c``, which
    flips every weight's sign when the logit is negative; dividing by ``|y_c|`` (at least 1e-6) keeps a drop a
    drop, and since it only scales each image's map, the normalised map does not depend on it. ``normalize=False``
    keeps the raw drops. Channels are set to 0 as in the paper (pytorch-grad-cam uses a large negative value
    when a layer's activations can be negative).

    Each ablated score comes from one compiled pass that feeds the layer's recorded output with the channel
    zeroed (:meth:`~cnn_exposed.engine.Engine.ablated_scores`): the layers before it are not recomputed, only
    those after it (and any branch skipping past it). The ablated copies of all images and channels are packed
    into batches of ``batch_size``. ``extras["ablated_scores"]`` (N, k') holds the scores, in the order of
    ``extras["channels"]``.

    Parameters
    ----------
    channels : int or None
        Ablate only the ``channels`` channels of largest spatial variance per image (the others weigh 0); None
        ablates every channel (one pass per channel).
    normalize : bool
        Divide the drops by ``|y_c|`` (default) or keep them as they are.
    """

    name = "ablationcam"
    tiny = 1e-6

    def __init__(self, model, *, channels: int | None = None, normalize: bool = True, **kwargs) -> None:
        super().__init__(model, channels=channels, **kwargs)
        self.normalize = bool(normalize)

    def options(self):
        return {"channels": self.channels, "normalize": self.normalize}

    def weights(self, state):
        acts = state.activations
        k = acts.shape[-1]
        chosen = top_channels(acts, self.channels)

        def ablated_score(img, channel):
            keep = np.ones((len(img), k), np.float32)
            keep[np.arange(len(img)), channel] = 0.0
            used, segments = np.unique(img, return_inverse=True)  # each image once; the pass gathers its rows
            with rows(used):
                return self.engine.ablated_scores(state.x[used], acts[used], segments, state.targets[img], keep)

        ablated = self.score_pairs(state, chosen, ablated_score)
        state.extras.update(ablated_scores=ablated, channels=chosen)
        drops = state.scores[:, None] - ablated
        if self.normalize:
            drops = drops / np.maximum(np.abs(state.scores), self.tiny)[:, None]
        return scatter_weights(chosen, drops, k)
