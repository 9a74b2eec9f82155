"""What both Colab notebooks do before their first explanation, kept here rather than copied into each:
report the runtime, make the saved figures light, seed everything, and load a model or say why it cannot be
loaded (no network for ImageNet weights in CI) instead of stopping the notebook."""

from __future__ import annotations

from .errors import CnnExposedError
from .models import LoadedModel, load_model


def setup(seed: int = 0) -> None:
    """Print the GPU (or its absence) and the versions in use, save figures as JPEG at screen resolution (a
    notebook with every output stays a few MB), and seed Python, NumPy and TensorFlow."""
    from importlib.metadata import version

    import keras
    import matplotlib.pyplot as plt
    import tensorflow as tf

    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("jpeg")
    except ImportError:  # not in a Jupyter kernel
        pass
    plt.rcParams["figure.dpi"] = 72
    gpus = tf.config.list_physical_devices("GPU")
    print("GPU:", ", ".join(g.name for g in gpus) if gpus else "none found (CPU only: everything still runs, slower)")
    print("keras", keras.__version__, "| tensorflow", tf.__version__, "| cnn-exposed", version("cnn-exposed"))
    keras.utils.set_random_seed(seed)


def load(model_name, class_names=None, preprocess=None) -> LoadedModel | None:
    """:func:`cnn_exposed.load_model`, or None after printing why the model cannot be loaded here."""
    try:
        return load_model(model_name, class_names=class_names, preprocess=preprocess)
    except CnnExposedError as err:
        print("cannot load", model_name, "->", err)
        return None
