"""Attribution methods: where in this image is the evidence for this class?

One class per method, all sharing the verb ``explain(images, target=...)``; :func:`explain` picks one by
name.
"""

from __future__ import annotations

from ..explanation import concatenate
from .base import AttributionMethod, GradientMethod, Result
from .batches import explain_many
from .cam import (
    FEM,
    AblationCAM,
    CAMMethod,
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
from .integrated_gradients import BlurIG, GradientSHAP, GuidedIG, IntegratedGradients, PathMethod, path_nodes
from .occlusion import Occlusion
from .random_masks import RISE, SobolAttribution
from .registry import METHODS, make_method, method_class
from .rule_based import LRP, Deconvnet, DeepLift, DeepShap, GuidedBackprop, GuidedGradCAM
from .superpixels import LIME, KernelSHAP
from .xrai import XRAI


def explain(
    model,
    images,
    method: str = "gradcam",
    *,
    target="predicted",
    layer=None,
    preprocess=None,
    batch_size: int | None = None,
    engine=None,
    **method_options,
):
    """Explain a classifier's decision on ``images`` with one attribution method.

    Parameters
    ----------
    model : keras.Model
        Sequential, functional or nested (e.g. a ``keras.applications`` base inside a ``Sequential``); or what
        :func:`~cnn_exposed.load_model` returns, whose preprocessing then applies unless ``preprocess`` is given.
    images : array-like, (N, H, W, C) or (H, W, C); a dict keyed by input name; or a dataset, PyDataset, iterable of
        batches or image files
        In the model's input range, or raw pixels when ``preprocess`` is given. A ``tf.data.Dataset`` (batched
        or not, of ``images``, ``(images, labels)``, ``(images, labels, weights)`` or dicts keyed by input
        name), a ``keras.utils.PyDataset``, any iterable of such batches (a generator is read once), or image
        files (a path, a list of paths, a folder; read and resized to the model's input size, unreadable ones
        skipped with a warning) is explained batch by batch and the batches joined: fine for a validation set;
        for more images than fit in memory use :func:`explain_batches`. See :mod:`cnn_exposed.sources`.
        A model with several inputs takes ``{input name: values}`` (or a list in ``model.inputs`` order):
        ``input=`` says which image input is explained (default: the only 4-D one), the others are held at their
        given values (one row per image).
    method : str
        One of ``"saliency"``, ``"gradient_x_input"``, ``"smoothgrad"``, ``"integrated_gradients"``,
        ``"blur_ig"``, ``"guided_ig"``, ``"gradient_shap"``, ``"xrai"``, ``"gradcam"``, ``"gradcam++"``,
        ``"layercam"``, ``"scorecam"``, ``"eigencam"``, ``"eigengradcam"``, ``"hirescam"``, ``"xgradcam"``,
        ``"ablationcam"``, ``"fem"``, ``"occlusion"``, ``"rise"``, ``"sobol"``, ``"kernel_shap"``, ``"lime"``,
        ``"lrp"``, ``"guided_backprop"``, ``"deconvnet"``, ``"guided_gradcam"``, ``"deeplift"``, ``"deepshap"``
        (:data:`METHODS`; the README's method table gives each one's options).
    target : "predicted", "true", int, sequence of int, or "top-k"
        The class to explain (see :func:`cnn_exposed.targets.resolve_targets`); ``"true"``: the labels that
        come with the images (a dataset's sparse or one-hot labels, a folder's class sub-folders).
    layer : str, layer object or None
        CAM methods only: a name, an ``"outer/inner"`` path through nested models, or a layer; None
        picks the last layer with a 4-D output.
    preprocess : callable or None
        Raw images -> model input; the heatmaps are then drawn over the raw images.
    batch_size : int or None
        Most images per compiled call (default 32); bounds memory.
    engine : None, "ray" or :class:`~cnn_exposed.RayEngine`
        Explain the batches on a Ray cluster (``"ray"``: a local one, or the one this process is connected to):
        each worker rebuilds the model and the method once and explains whole batches (files are read by the
        workers, so they must reach the paths). The maps equal this machine's. See
        :mod:`cnn_exposed.attribution.batches`.
    **method_options
        ``score`` ("logit" or "probability"), ``progress``, ``input`` and ``output`` (a model with several: which
        input is explained, which output, by name or index), and the method's own options: ``samples``,
        ``noise``, ``base``, ``reduction``, ``seed`` (SmoothGrad); ``steps``, ``baseline``, ``rule``
        (integrated gradients); ``max_sigma``, ``steps`` (Blur IG); ``steps``, ``fraction``, ``max_dist``,
        ``baseline`` (Guided IG); ``samples``, ``background``, ``noise``, ``seed`` (GradientSHAP); ``steps``,
        ``area_threshold`` (XRAI); ``channels`` (Score-CAM, Ablation-CAM); ``normalize`` (Ablation-CAM); ``k``
        (FEM); ``patch``, ``stride``, ``fill`` (occlusion); ``samples``, ``grid``, ``keep_probability``, ``fill``,
        ``seed`` (RISE); ``grid``, ``designs``, ``fill``, ``seed`` (Sobol); ``samples``, ``segmentation``,
        ``segments``, ``segment_options``, ``fill``, ``seed`` (KernelSHAP, LIME; LIME also ``kernel_width``);
        ``rule``, ``epsilon``, ``bounds`` (LRP); ``baseline`` (DeepLIFT); ``background`` (DeepSHAP).

    Returns
    -------
    Explanation
    """
    if engine is not None:
        options = {"layer": layer, "preprocess": preprocess, "batch_size": batch_size, **method_options}
        return concatenate([part[method] for part in explain_many(model, {method: (method, options)}, images, target,
                                                                  engine)])  # fmt: skip
    return make_method(
        model, method, layer=layer, preprocess=preprocess, batch_size=batch_size, **method_options
    ).explain(images, target=target)


def explain_batches(
    model,
    images,
    method: str = "gradcam",
    *,
    target="predicted",
    layer=None,
    preprocess=None,
    batch_size: int | None = None,
    engine=None,
    **method_options,
):
    """Explain any source of images a batch at a time, with memory bounded by the batch: an iterator of
    one :class:`Explanation` per batch, each computed only when the iterator is advanced.

    Takes the same arguments as :func:`explain`; ``images`` is typically a ``tf.data.Dataset`` (e.g. from
    ``keras.utils.image_dataset_from_directory``), a ``keras.utils.PyDataset``, a generator of batches
    (consumed once) or a list of image files. Each explanation's ``image_index`` gives its images' positions
    in the source and ``labels`` the labels that came with them. Write each batch's results out (or reduce
    them) as they come::

        for exp in cnn_exposed.explain_batches(model, val_ds, "gradcam", target="true"):
            save(exp.image_index, exp.maps)

    With ``engine=`` the batches are explained on a Ray cluster and still arrive in order.
    """
    if engine is not None:
        options = {"layer": layer, "preprocess": preprocess, "batch_size": batch_size, **method_options}
        return (part[method] for part in explain_many(model, {method: (method, options)}, images, target, engine))
    explainer = make_method(model, method, layer=layer, preprocess=preprocess, batch_size=batch_size, **method_options)
    return explainer.explain_batches(images, target=target)


__all__ = [
    "FEM",
    "LIME",
    "LRP",
    "METHODS",
    "RISE",
    "XRAI",
    "AblationCAM",
    "AttributionMethod",
    "BlurIG",
    "CAMMethod",
    "Deconvnet",
    "DeepLift",
    "DeepShap",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientMethod",
    "GradientSHAP",
    "GradientXInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedIG",
    "HiResCAM",
    "IntegratedGradients",
    "KernelSHAP",
    "LayerCAM",
    "Occlusion",
    "PathMethod",
    "Result",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "SobolAttribution",
    "XGradCAM",
    "explain",
    "explain_batches",
    "make_method",
    "method_class",
    "path_nodes",
]
