"""Attribution methods: where in this image is the evidence for this class?

One class per method, all sharing the verb ``explain(images, target=...)``; :func:`explain` picks one by
name.
"""

from __future__ import annotations

from .base import AttributionMethod, GradientMethod, Result
from .cam import CAMMethod, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from .gradients import GradientXInput, Saliency, SmoothGrad
from .integrated_gradients import IntegratedGradients, path_nodes
from .occlusion import Occlusion
from .rule_based import LRP, Deconvnet, GuidedBackprop, GuidedGradCAM

METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (
        Saliency,
        GradientXInput,
        SmoothGrad,
        IntegratedGradients,
        GradCAM,
        GradCAMPlusPlus,
        LayerCAM,
        ScoreCAM,
        Occlusion,
        LRP,
        GuidedBackprop,
        Deconvnet,
        GuidedGradCAM,
    )
}


def method_class(method: str | type[AttributionMethod]) -> type[AttributionMethod]:
    """The class of a method given by name (or the class itself); unknown names list the valid ones."""
    if isinstance(method, type) and issubclass(method, AttributionMethod):
        return method
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown attribution method {method!r}. Valid methods: {', '.join(METHODS)}.") from None


def explain(
    model,
    images,
    method: str = "gradcam",
    *,
    target="predicted",
    layer=None,
    preprocess=None,
    batch_size: int | None = None,
    **method_options,
):
    """Explain a classifier's decision on ``images`` with one attribution method.

    Parameters
    ----------
    model : keras.Model
        Sequential, functional or nested (e.g. a ``keras.applications`` base inside a ``Sequential``).
    images : array-like, (N, H, W, C) or (H, W, C); or a dict keyed by input name
        In the model's input range, or raw pixels when ``preprocess`` is given. A model with several inputs takes
        ``{input name: values}`` (or a list in ``model.inputs`` order): ``input=`` says which image input is
        explained (default: the only 4-D one), the others are held at their given values (one row per image).
    method : str
        One of ``"saliency"``, ``"gradient_x_input"``, ``"smoothgrad"``, ``"integrated_gradients"``,
        ``"gradcam"``, ``"gradcam++"``, ``"layercam"``, ``"scorecam"``, ``"occlusion"``, ``"lrp"``,
        ``"guided_backprop"``, ``"deconvnet"``, ``"guided_gradcam"``.
    target : "predicted", int, sequence of int, or "top-k"
        The class to explain (see :func:`cnn_exposed.targets.resolve_targets`).
    layer : str, layer object or None
        CAM methods only: a name, an ``"outer/inner"`` path through nested models, or a layer; None
        picks the last layer with a 4-D output.
    preprocess : callable or None
        Raw images -> model input; the heatmaps are then drawn over the raw images.
    batch_size : int or None
        Most images per compiled call (default 32); bounds memory.
    **method_options
        ``score`` ("logit" or "probability"), ``progress``, ``input`` and ``output`` (a model with several: which
        input is explained, which output, by name or index), and the method's own options: ``samples``,
        ``noise``, ``base``, ``reduction``, ``seed`` (SmoothGrad); ``steps``, ``baseline``, ``rule``
        (integrated gradients); ``channels`` (Score-CAM); ``patch``, ``stride``, ``fill``
        (occlusion); ``rule``, ``epsilon``, ``bounds`` (LRP).

    Returns
    -------
    Explanation
    """
    cls = method_class(method)
    kwargs = dict(preprocess=preprocess, batch_size=batch_size, **method_options)
    if layer is not None or cls.uses_layer:
        kwargs["layer"] = layer
    return cls(model, **kwargs).explain(images, target=target)


__all__ = [
    "METHODS",
    "AttributionMethod",
    "CAMMethod",
    "Deconvnet",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientMethod",
    "GradientXInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "IntegratedGradients",
    "LRP",
    "LayerCAM",
    "Occlusion",
    "Result",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "explain",
    "method_class",
    "path_nodes",
]
