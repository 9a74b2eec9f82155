"""Loading a model to explain: the bundled demo, a ``keras.applications`` model, or the user's own file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from .bundled import demo_metadata, demo_model
from .errors import CnnExposedError, ModelError, OfflineError
from .savedmodel import is_saved_model, load_saved_model
from .targets import class_count

# name -> (keras.applications constructor, preprocessing module, input size)
APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2", 224),
    "mobilenet": ("MobileNet", "mobilenet", 224),
    "mobilenet_v3_small": ("MobileNetV3Small", "mobilenet_v3", 224),
    "mobilenet_v3_large": ("MobileNetV3Large", "mobilenet_v3", 224),
    "resnet50": ("ResNet50", "resnet50", 224),
    "resnet50_v2": ("ResNet50V2", "resnet_v2", 224),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet", 224),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "efficientnet_v2", 224),
    "vgg16": ("VGG16", "vgg16", 224),
    "vgg19": ("VGG19", "vgg19", 224),
    "densenet121": ("DenseNet121", "densenet", 224),
    "inception_v3": ("InceptionV3", "inception_v3", 299),
    "xception": ("Xception", "xception", 299),
    "convnext_tiny": ("ConvNeXtTiny", "convnext", 224),
}

PREPROCESSING = ("scale_0_1", "scale_-1_1", "none")


def preprocessing_function(kind: str | Callable | None) -> Callable[[np.ndarray], np.ndarray]:
    """Raw uint8 RGB images -> model input, by name or as given.

    ``"scale_0_1"``: x / 255; ``"scale_-1_1"``: x / 127.5 − 1; ``"none"``: float32 pixels unchanged;
    a ``keras.applications`` name (e.g. ``"mobilenet_v2"``) uses that family's ``preprocess_input``.
    """
    if callable(kind):
        return kind
    if kind is None or kind == "none":
        return lambda images: np.asarray(images, dtype=np.float32)
    if kind == "scale_0_1":
        return lambda images: np.asarray(images, dtype=np.float32) / 255.0
    if kind == "scale_-1_1":
        return lambda images: np.asarray(images, dtype=np.float32) / 127.5 - 1.0
    if kind in APPLICATIONS:
        module = getattr(keras.applications, APPLICATIONS[kind][1])
        return lambda images: module.preprocess_input(np.array(images, dtype=np.float32))
    raise CnnExposedError(
        f"Unknown preprocessing {kind!r}. Use one of {PREPROCESSING}, a keras.applications name "
        f"({', '.join(APPLICATIONS)}), or a function mapping uint8 RGB images to model input."
    )


@dataclass
class LoadedModel:
    """A model ready to explain.

    Attributes
    ----------
    model : keras.Model
    preprocess : callable
        Raw uint8 RGB images ``(N, H, W, 3)`` -> model input.
    class_names : list of str
    input_size : (int, int)
        ``(height, width)`` the model takes.
    name : str
    metadata : dict
        What the model's metadata file says (the demo's accuracy, seed, ...).
    """

    model: keras.Model
    preprocess: Callable[[np.ndarray], np.ndarray]
    class_names: list
    input_size: tuple
    name: str
    metadata: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        more = "..." if len(self.class_names) > 5 else ""
        return (
            f"LoadedModel({self.name!r}, input_size={self.input_size}, "
            f"{len(self.class_names)} classes: {self.class_names[:5]}{more})"
        )


def unwrap_loaded(model, preprocess: Callable | None = None) -> tuple:
    """``(keras model, preprocess)``: a :class:`LoadedModel` (what :func:`load_model` returns) stands for its Keras
    model and, unless ``preprocess`` is given, its own preprocessing (so raw pixels go in, as with the CLI);
    anything else is returned as it is."""
    if isinstance(model, LoadedModel):
        return model.model, model.preprocess if preprocess is None else preprocess
    return model, preprocess


def read_class_names(source: str | Path | Sequence[str] | None, count: int) -> list[str]:
    """Class names from a list, a text file (one per line), or a data folder's sub-folder names."""
    if source is None:
        return [str(i) for i in range(count)]
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        names = sorted(p.name for p in Path(source).iterdir() if p.is_dir() and not p.name.startswith("."))
    elif isinstance(source, (str, Path)) and Path(source).is_file():
        names = [line.strip() for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    elif isinstance(source, (str, Path)):
        raise CnnExposedError(
            f"Class names: {str(source)!r} is neither a text file (one name per line) nor a folder of "
            "class sub-folders."
        )
    else:
        names = [str(n) for n in source]
    if len(names) != count:
        raise CnnExposedError(
            f"Got {len(names)} class names but the model has {count} outputs. Give one name per output, "
            "in the order the model was trained with (for folders: sorted sub-folder names)."
        )
    return names


def _output_classes(model: keras.Model) -> int:
    return class_count(model.outputs[0].shape[-1])


def _load_demo(fair: bool = False) -> LoadedModel:
    meta = demo_metadata(fair)
    model = demo_model(fair)
    return LoadedModel(
        model=model,
        preprocess=preprocessing_function(meta["preprocessing"]),
        class_names=list(meta["class_names"]),
        input_size=tuple(meta["input_size"]),
        name="demo-fair" if fair else "demo",
        metadata=meta,
    )


def _imagenet_class_names() -> list[str]:
    try:
        decoded = keras.applications.imagenet_utils.decode_predictions(np.eye(1000, dtype=np.float32), top=1)
        return [d[0][1] for d in decoded]
    except Exception:  # offline: the class index file is downloaded too
        return [f"imagenet_{i}" for i in range(1000)]


def _load_application(name: str, weights: str | None) -> LoadedModel:
    ctor, module, size = APPLICATIONS[name]
    try:
        model = getattr(keras.applications, ctor)(weights=weights)
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
        if any(s in text for s in ("URL fetch failure", "urlopen", "Name or service", "resolve", "HTTP")):
            raise OfflineError(
                f"Could not download the ImageNet weights of {name} (no network?). Either run where "
                "Keras can reach its download server once (the weights are cached in ~/.keras/models), "
                f"copy the weights file there by hand, load a local model file with "
                f"cnn_exposed.load_model('path/to/model.keras'), use weights=None for random weights, "
                "or run the offline demo: cnn_exposed.load_model('demo')."
            ) from None
        raise
    names = _imagenet_class_names() if weights == "imagenet" else [str(i) for i in range(1000)]
    return LoadedModel(model, preprocessing_function(name), names, (size, size), name, {"weights": weights})


def load_model(
    name_or_path: str | Path | keras.Model,
    *,
    preprocess: str | Callable | None = None,
    class_names: str | Path | Sequence[str] | None = None,
    weights: str | None = "imagenet",
    endpoint: str = "serving_default",
    output: str | int | None = None,
    head: str = "auto",
    input_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load a model with its preprocessing, class names and input size.

    Parameters
    ----------
    name_or_path : str, Path or keras.Model
        ``"demo"`` (the bundled pool/bathroom/bedroom model, trained with rails in bathrooms only);
        ``"demo-fair"`` (its negative control: the same architecture trained where rails appear in every
        class equally often, ``scripts/train_demo.py --fair``); a ``keras.applications`` name
        (``"mobilenet_v2"``, ``"resnet50"``, ``"efficientnet_b0"``, ``"vgg16"``, ... see
        :data:`APPLICATIONS`); a ``.keras`` or ``.h5`` file; a TensorFlow SavedModel directory (the one holding
        ``saved_model.pb``: see :mod:`cnn_exposed.savedmodel` for what works on it); or a model object.
    preprocess : str or callable, optional
        For a user's model: ``"scale_0_1"`` (default; ``"none"`` when the model rescales its input itself, see
        :func:`rescales_itself`), ``"scale_-1_1"``, ``"none"``, a ``keras.applications`` name, or a function.
        Applications and the demo bring their own.
    class_names : list, text file or folder, optional
        For a user's model: names in output order, a file with one per line, or the training data
        folder (its sorted sub-folder names, the ``image_dataset_from_directory`` order).
    weights : str or None
        For ``keras.applications`` models: ``"imagenet"`` (downloaded as Keras normally does) or None.
    endpoint, output, head, input_size
        For a SavedModel: the signature or function to call (default ``"serving_default"``), which of its
        outputs to explain when it has several (a dict key), whether that output is ``"softmax"`` or
        ``"sigmoid"`` probabilities or ``"logits"`` (default ``"auto"``: decided on a probe batch), and the
        ``(height, width)`` of the images when its signature leaves them open; see
        :func:`cnn_exposed.savedmodel.load_saved_model`. What was read is in ``metadata``.
    """
    metadata: dict = {}
    if isinstance(name_or_path, keras.Model):
        model, name = name_or_path, name_or_path.name
    elif str(name_or_path) in ("demo", "demo-fair"):
        return _load_demo(fair=str(name_or_path) == "demo-fair")
    elif str(name_or_path) in APPLICATIONS:
        return _load_application(str(name_or_path), weights)
    else:
        options = {"endpoint": endpoint, "output": output, "head": head, "input_size": input_size}
        model, name, metadata = _load_file(Path(name_or_path), **options)
    shape = tuple(model.inputs[0].shape[1:3])
    if preprocess is None and rescales_itself(model):
        preprocess = "none"
        metadata["preprocess"] = "none: the model rescales its input itself (Rescaling before its first weights)"
    return LoadedModel(
        model=model,
        preprocess=preprocessing_function(preprocess or "scale_0_1"),
        class_names=read_class_names(class_names, _output_classes(model)),
        input_size=shape,
        name=name,
        metadata=metadata,
    )


def rescales_itself(model: keras.Model) -> bool:
    """Whether the model takes 0–255 pixels: a ``Rescaling`` layer comes before its first trainable weights (as
    Keras' image-classification tutorial puts ``Rescaling(1./255)`` first, and as EfficientNet and ConvNeXt
    rescale inside), so scaling the pixels again would feed it nearly black images."""
    from .layers import iter_layers

    for ref in iter_layers(model):
        if isinstance(ref.layer, keras.layers.Rescaling):
            return True
        if not isinstance(ref.layer, keras.Model) and ref.layer.trainable_weights:
            return False
    return False


def _load_file(path: Path, **saved_model_options) -> tuple[keras.Model, str, dict]:
    """A model file or SavedModel directory: (model, name, metadata)."""
    if path.name in ("saved_model.pb", "saved_model.pbtxt"):  # the SavedModel's own file: its directory
        path = path.parent
    if not path.exists():
        raise CnnExposedError(
            f"No model named or found at {str(path)!r}. Give 'demo', 'demo-fair', one of "
            f"{', '.join(APPLICATIONS)}, the path of a .keras / .h5 file, or a SavedModel directory."
        )
    if path.is_dir():
        if not is_saved_model(path):
            raise CnnExposedError(
                f"{path} is a directory without saved_model.pb, so not a TensorFlow SavedModel. Give the "
                "SavedModel's own directory (the one holding saved_model.pb and variables/), or a .keras / .h5 file."
            )
        model, info = load_saved_model(path, **saved_model_options)
        return model, path.resolve().name, {"saved_model": str(path), **info}
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise CnnExposedError(f"{path.name}: expected a .keras or .h5 model file, or a SavedModel directory.")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:
        raise ModelError(f"Could not load {path}: {err}") from err
    return model, path.stem, {}
