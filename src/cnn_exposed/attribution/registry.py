"""Every attribution method by name, and building one for a model (what :func:`cnn_exposed.explain` and the
workers of a Ray run use)."""

from __future__ import annotations

from .base import AttributionMethod
from .cam import (
    FEM,
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from .gradients import GradientXInput, Saliency, SmoothGrad
from .integrated_gradients import BlurIG, GradientSHAP, GuidedIG, IntegratedGradients
from .occlusion import Occlusion
from .random_masks import RISE, SobolAttribution
from .rule_based import LRP, Deconvnet, DeepLift, DeepShap, GuidedBackprop, GuidedGradCAM
from .superpixels import LIME, KernelSHAP
from .xrai import XRAI

METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (
        Saliency,
        GradientXInput,
        SmoothGrad,
        IntegratedGradients,
        BlurIG,
        GuidedIG,
        GradientSHAP,
        XRAI,
        GradCAM,
        GradCAMPlusPlus,
        LayerCAM,
        ScoreCAM,
        EigenCAM,
        EigenGradCAM,
        HiResCAM,
        XGradCAM,
        AblationCAM,
        FEM,
        Occlusion,
        RISE,
        SobolAttribution,
        KernelSHAP,
        LIME,
        LRP,
        GuidedBackprop,
        Deconvnet,
        GuidedGradCAM,
        DeepLift,
        DeepShap,
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


def make_method(model, method, *, layer=None, **kwargs) -> AttributionMethod:
    """An attribution method (by name or class) built for ``model``, as :func:`explain` builds it."""
    cls = method_class(method)
    if layer is not None or cls.uses_layer:
        kwargs["layer"] = layer
    return cls(model, **kwargs)
