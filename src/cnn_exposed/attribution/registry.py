"""Every attribution method by name, and building one for a model (what :func:`cnn_exposed.explain` and the
workers of a Ray run use)."""

from __future__ import annotations

from . import cam, gradients, occlusion, random_masks, rule_based, superpixels, xrai
from . import integrated_gradients as paths
from .base import AttributionMethod

METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (
        gradients.Saliency, gradients.GradientXInput, gradients.SmoothGrad,
        paths.IntegratedGradients, paths.BlurIG, paths.GuidedIG, paths.GradientSHAP, xrai.XRAI,
        cam.GradCAM, cam.GradCAMPlusPlus, cam.LayerCAM, cam.ScoreCAM, cam.EigenCAM, cam.EigenGradCAM, cam.HiResCAM,
        cam.XGradCAM, cam.AblationCAM, cam.FEM,
        occlusion.Occlusion, random_masks.RISE, random_masks.SobolAttribution,
        superpixels.KernelSHAP, superpixels.LIME,
        rule_based.LRP, rule_based.GuidedBackprop, rule_based.Deconvnet, rule_based.GuidedGradCAM,
        rule_based.DeepLift, rule_based.DeepShap,
    )
}  # fmt: skip


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
