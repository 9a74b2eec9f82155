"""cnn-exposed: see why a convolutional image classifier decides what it decides.

>>> import cnn_exposed
>>> exp = cnn_exposed.explain(model, images, "gradcam")   # exp.maps: (N, H, W) in [0, 1]
>>> cnn_exposed.plot_explanations(exp, class_names)
"""

from __future__ import annotations

from . import bundled, images, metrics, notebook, savedmodel, segmentation, sources, visualisation  # submodules
from .attribution import (
    FEM,
    LIME,
    LRP,
    METHODS,
    RISE,
    XRAI,
    AblationCAM,
    AttributionMethod,
    BlurIG,
    Deconvnet,
    DeepLift,
    DeepShap,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    GradientSHAP,
    GradientXInput,
    GuidedBackprop,
    GuidedGradCAM,
    GuidedIG,
    HiResCAM,
    IntegratedGradients,
    KernelSHAP,
    LayerCAM,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    SobolAttribution,
    XGradCAM,
    explain,
    explain_batches,
)
from .audit import Audit, Candidate, audit
from .distributed import RayEngine
from .engine import Engine
from .errors import (
    CnnExposedError,
    ImageReadError,
    InputError,
    LayerAccessError,
    LayerNotFoundError,
    ModelError,
    ModelIOError,
    NoSpatialLayerError,
    OfflineError,
    TargetError,
    UnsupportedLayerError,
)
from .evaluation import Evaluation, Recommendation, evaluate
from .explanation import Explanation, normalize_maps, signed_maps
from .layers import find_last_spatial_layer, list_layers, resolve_layer
from .metrics import pointing_game
from .model_io import held_inputs
from .models import LoadedModel, load_model
from .plotting import colorize, draw_map, overlay_heatmap, overlay_signed, plot_explanations, save_png, to_uint8
from .tcav import TCAVResult, tcav
from .visualisation import (
    Visualisation,
    network_walk,
    plot_activation_maps,
    render,
    visualise_classes,
    visualise_filters,
)

__version__ = "0.1.0"

__all__ = [
    "FEM",
    "LIME",
    "LRP",
    "METHODS",
    "RISE",
    "XRAI",
    "AblationCAM",
    "AttributionMethod",
    "Audit",
    "BlurIG",
    "Candidate",
    "CnnExposedError",
    "Deconvnet",
    "DeepLift",
    "DeepShap",
    "EigenCAM",
    "EigenGradCAM",
    "Engine",
    "Evaluation",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientSHAP",
    "GradientXInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedIG",
    "HiResCAM",
    "ImageReadError",
    "InputError",
    "IntegratedGradients",
    "KernelSHAP",
    "LayerAccessError",
    "LayerCAM",
    "LayerNotFoundError",
    "LoadedModel",
    "ModelError",
    "ModelIOError",
    "NoSpatialLayerError",
    "Occlusion",
    "OfflineError",
    "RayEngine",
    "Recommendation",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "SobolAttribution",
    "TCAVResult",
    "TargetError",
    "UnsupportedLayerError",
    "Visualisation",
    "XGradCAM",
    "audit",
    "bundled",
    "colorize",
    "demo",
    "draw_map",
    "evaluate",
    "explain",
    "explain_batches",
    "find_last_spatial_layer",
    "held_inputs",
    "images",
    "list_layers",
    "load_model",
    "metrics",
    "network_walk",
    "normalize_maps",
    "notebook",
    "overlay_heatmap",
    "overlay_signed",
    "plot_activation_maps",
    "plot_explanations",
    "pointing_game",
    "render",
    "resolve_layer",
    "save_png",
    "savedmodel",
    "segmentation",
    "signed_maps",
    "sources",
    "tcav",
    "to_uint8",
    "visualisation",
    "visualise_classes",
    "visualise_filters",
]


def __getattr__(name: str):
    """``cnn_exposed.demo``, the scene generator, is imported when first used, not by ``import cnn_exposed``."""
    if name == "demo":
        import importlib

        return importlib.import_module(".demo", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
