"""Methods built on replaced backward rules: LRP, guided backprop, deconvnet, guided Grad-CAM, DeepLIFT and
DeepSHAP."""

from __future__ import annotations

import numpy as np

from ..engine import batch_slices, engine_for
from ..errors import InputError
from ..explanation import channel_max_abs, normalize_maps
from ..inputs import BLUR_SIGMA, prepare_images
from ..model_io import rows
from ..rules import RuleSet
from .base import GradientMethod, Result, gradient_result
from .cam import GradCAM
from .integrated_gradients import BASELINES, check_baseline, completeness_errors, make_baselines


class RuleMethod(GradientMethod):
    """A method whose result is one rule-based backward pass per image; see :mod:`.rules`."""

    def _rules(self) -> RuleSet:
        raise NotImplementedError

    def __init__(
        self, model, *, score=None, preprocess=None, batch_size=None, progress=True, input=None, output=None
    ) -> None:
        super().__init__(
            model, score=score, preprocess=preprocess, batch_size=batch_size, progress=progress, input=input,
            output=output,
        )  # fmt: skip
        self.engine = engine_for(self.model, None, self.score, self._rules(), input, output)

    def _pass(self, x, targets):
        return self.engine.map_batches(self.engine.relevance, (x, targets), self.batch_size, self.progress, self.name)

    def attribute(self, x, targets):
        return self._pass(x, targets)[1]

    def raw_map(self, attributions: np.ndarray) -> np.ndarray:
        return channel_max_abs(attributions)

    def compute(self, x, targets, images) -> Result:
        scores, attributions, targets, probs = self._pass(x, targets)
        attributions = attributions.astype(np.float32)
        return Result(self.raw_map(attributions), targets, scores, probs, attributions=attributions)


class LRP(RuleMethod):
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019).

    ``attributions`` hold the relevance of each input value (summing to the logit, up to what biases and
    ε absorb); ``maps`` show the positive relevance summed over colour channels.

    Parameters
    ----------
    rule : str or dict
        ``"epsilon"``, ``"zplus"``, ``"alpha1beta0"``, ``"alpha2beta1"`` for every weighted layer, or a
        composite ``{"first": "zb", "conv": "zplus", "dense": "epsilon"}`` (the default, ``"composite"``).
        Batch normalisation is folded into the preceding convolution or dense layer.
    epsilon : float
        ε of the ε-rule.
    bounds : (low, high) or None
        Input bounds of the z^B rule (model-input units); None: each image's own min and max.
    """

    name = "lrp"
    signed = True

    def __init__(self, model, *, rule="composite", epsilon: float = 1e-2, bounds=None, **kwargs) -> None:
        self.rule_set = RuleSet("lrp", rule, epsilon, bounds)
        super().__init__(model, **kwargs)

    def _rules(self):
        return self.rule_set

    def options(self):
        return {"rule": self.rule_set.composite, "epsilon": self.rule_set.epsilon, "bounds": self.rule_set.bounds}

    def raw_map(self, attributions):
        return attributions.sum(axis=-1)


class GuidedBackprop(RuleMethod):
    """Guided backpropagation (Springenberg et al. 2014): ReLUs pass back only positive gradients where
    their input was positive. Known to depend little on the model's weights (Adebayo et al. 2018)."""

    name = "guided_backprop"

    def _rules(self):
        return RuleSet("guided")


class Deconvnet(RuleMethod):
    """Deconvnet (Zeiler & Fergus 2014): ReLUs pass back the positive part of the gradient, whatever their
    input was."""

    name = "deconvnet"

    def _rules(self):
        return RuleSet("deconv")


class GuidedGradCAM(GuidedBackprop):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop ⊙ the Grad-CAM map upsampled to the input.

    ``layer`` is Grad-CAM's (default: the last spatial layer).
    """

    name = "guided_gradcam"
    uses_layer = True

    def __init__(self, model, *, layer=None, **kwargs) -> None:
        self.gradcam = GradCAM(model, layer=layer, **kwargs)
        kwargs.pop("layer", None)
        super().__init__(model, **kwargs)

    @property
    def layer_ref(self):
        return self.gradcam.engine.layer

    def options(self):
        return {"layer": self.layer_ref.path}

    def compute(self, x, targets, images) -> Result:
        guided = super().compute(x, targets, images)
        cam = self.gradcam.compute(x, guided.targets, images)
        attributions = guided.attributions * normalize_maps(cam.raw_maps)[..., None]
        return Result(
            channel_max_abs(attributions), guided.targets, guided.scores, guided.probabilities,
            attributions=attributions, layer_maps=cam.layer_maps,
        )  # fmt: skip


DEEPLIFT_RULES = RuleSet("deeplift")


class DeepLift(RuleMethod):
    """DeepLIFT with the Rescale rule (Shrikumar et al. 2017): ``m ⊙ (x − x′)``, ``m`` the multipliers
    ``Δs/Δx`` chained backward from the logit through each layer's rule (:mod:`cnn_exposed.rules.deeplift`).

    Each image and its reference run as one batch ``[x; x′]`` (so ``batch_size`` rows hold ``batch_size // 2``
    pairs, at least one), and each nonlinearity's rule reads its two halves. The attributions sum to
    ``f(x) − f(x′)`` (summation to delta) up to rounding wherever every layer has a rule (ReLU-family and other
    element-wise activations, products and squeeze-and-excitation gates, max pooling, layer normalisation, and
    the linear layers); softmax inside the network and unknown layers take their gradient and break it. The
    result's ``completeness_error`` is ``|Σ attributions − (f(x) − f(x′))| / |f(x) − f(x′)|``, as for
    integrated gradients.

    Parameters
    ----------
    baseline : "black", "blur", "noise" or array
        The reference ``x′``, as integrated gradients takes it: ``"black"`` (through ``preprocess`` when given,
        else zeros), ``"blur"`` (σ = ``blur_sigma`` × the image size), ``"noise"`` (uniform over the image's
        range, seeded), or model-input values broadcastable to the images.
    blur_sigma : float
        Blur σ as a fraction of max(height, width).
    seed : int
        Seeds the noise baseline.
    """

    name = "deeplift"
    signed = True

    def __init__(self, model, *, baseline="black", blur_sigma: float = BLUR_SIGMA, seed: int = 0, **kwargs) -> None:
        check_baseline(baseline)
        self.baseline, self.blur_sigma, self.seed = baseline, float(blur_sigma), seed
        super().__init__(model, **kwargs)

    def _rules(self):
        return DEEPLIFT_RULES

    def options(self):
        return {"baseline": self.baseline if isinstance(self.baseline, str) else "array", "seed": self.seed}

    def references(self, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """``(references, shared)``: ``(M, K, H, W, C)`` references of each image, or ``(K, H, W, C)`` shared by
        all (``shared``); the attributions average over the K."""
        return make_baselines(x, self.baseline, self.preprocess, self.blur_sigma, self.seed)[:, None], False

    def _averages(self, x, targets):
        """(attributions averaged over each image's references, scores, mean reference scores, targets,
        probabilities); the (image, reference) pairs of all images packed into batches."""
        refs, shared = self.references(x)
        k = len(refs) if shared else refs.shape[1]
        sums, ref_sums = np.zeros(x.shape, np.float32), np.zeros(len(x), np.float64)
        scores, resolved = np.zeros(len(x), np.float32), np.zeros(len(x), np.int64)
        probs = None
        for s in batch_slices(len(x) * k, max(1, self.batch_size // 2), progress=self.progress, desc=self.name):
            idx = np.arange(s.start, s.stop)
            img, row = idx // k, idx % k
            r = refs[row] if shared else refs[img, row]
            with rows(img):  # each pair with its image's side inputs
                out = self.engine.multipliers(x[img], r, targets[img])
            contributions = out.multipliers * (x[img] - r)
            for i in np.unique(img):  # idx is sorted: each image's pairs form one run
                sums[i] += contributions[img == i].sum(axis=0)
            np.add.at(ref_sums, img, out.reference_scores)
            if probs is None:
                probs = np.zeros((len(x), out.probabilities.shape[1]), np.float32)
            scores[img], resolved[img], probs[img] = out.scores, out.targets, out.probabilities
        return sums / k, scores, (ref_sums / k).astype(np.float32), resolved, probs

    def attribute(self, x, targets):
        return self._averages(x, targets)[0]

    def compute(self, x, targets, images) -> Result:
        attributions, scores, ref_scores, targets, probs = self._averages(x, targets)
        error, total = completeness_errors(attributions, scores - ref_scores)
        return gradient_result(
            attributions, targets, scores, probs, completeness_error=error.astype(np.float32),
            extras={"baseline_scores": ref_scores, "attribution_sums": total},
        )  # fmt: skip


class DeepShap(DeepLift):
    """DeepSHAP (Lundberg & Lee 2017): DeepLIFT against every row of a background set, averaged; the
    attributions sum to ``f(x) − mean f(background)`` (``completeness_error`` against that).

    Parameters
    ----------
    background : "black", array, or a sequence of "black" / "blur" / "noise"
        Images ``(K, H, W, C)`` or one ``(H, W, C)`` (model-input values, or raw pixels when ``preprocess`` is
        given, as :class:`~cnn_exposed.attribution.GradientSHAP` takes them): a sample of the training data, as
        shap's DeepExplainer takes (its docs: ~100 rows is good). Costs K pairs per image. Or integrated
        gradients' baselines, each image's own (``("black", "blur")``: the mean of DeepLIFT from black and from
        the blurred image). Default ``"black"`` (as GradientSHAP's): then equal to DeepLIFT from black.
    blur_sigma, seed : as :class:`DeepLift`.
    """

    name = "deepshap"

    def __init__(self, model, *, background="black", blur_sigma: float = BLUR_SIGMA, seed: int = 0,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(model, blur_sigma=blur_sigma, seed=seed, **kwargs)
        kinds = [background] if isinstance(background, str) else background
        if isinstance(kinds, (list, tuple)) and all(isinstance(b, str) for b in kinds):
            if not kinds or any(b not in BASELINES for b in kinds):
                raise ValueError(f"background must be images or baselines from {BASELINES}, got {background!r}.")
            self.background: tuple | np.ndarray = tuple(kinds)
        else:
            self.background = prepare_images(background, self.engine.input_shape, self.preprocess)[1]  # (H, W, C) too
            if len(self.background) < 1:
                raise InputError("background is empty: give at least one image (shap suggests about 100).")

    def options(self):
        background = list(self.background) if isinstance(self.background, tuple) else len(self.background)
        return {"background": background, "seed": self.seed}

    def references(self, x):
        if not isinstance(self.background, tuple):
            if self.background.shape[1:] != x.shape[1:]:
                shapes = f"{self.background.shape[1:]}, the images {x.shape[1:]}"
                raise InputError(f"background images have shape {shapes}: give images of the explained size.")
            return self.background, True
        each = [make_baselines(x, b, self.preprocess, self.blur_sigma, self.seed) for b in self.background]
        return np.stack(each, axis=1), False
