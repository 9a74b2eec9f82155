"""Methods built on replaced backward rules: LRP, guided backprop, deconvnet and guided Grad-CAM."""

from __future__ import annotations

import numpy as np

from ..engine import engine_for
from ..explanation import channel_max_abs, normalize_maps
from ..rules import RuleSet
from .base import GradientMethod, Result
from .cam import GradCAM


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
        self.engine = engine_for(model, None, self.score, self._rules(), input, output)

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
