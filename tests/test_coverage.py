"""The support matrix: every keras.applications family × every attribution method × feature visualisation.

Each family is built with random weights (no download), nested in a Sequential head as users build
transfer-learning models, at an odd input size (a shape no network's strides divide evenly: the stricter case
for padding, strides and upsampling), MobileNetV2 also at its smallest input (a 1×1 last feature map); plus a
model as Keras' tutorials build it (augmentation, rescaling, separable convolutions, dropout inside the model)
and a subclassed model. Every cell must give finite maps of the image's shape: no refusals. The cells' own
numbers are checked elsewhere (tests/test_rules.py, test_subclassed.py, ...); this is the breadth.

One test per model, its cells run in a loop so the model is built once; a failure lists every failing cell.
Fast settings (2 images, few steps). Nearly all of a cell's time is tracing: one graph per kind of pass
(about a dozen per model).

The family cells are marked ``family``; the README's test command runs them all (CI's latest stack, Keras 3.15)
and CI's other two stages deselect them. A small model made of every kind of layer the twelve families are
built from (``every_kind_model``), put together as ``keras.applications`` does, runs in every stage, so each end
of the supported Keras range (the floor's 3.10, Colab's 3.13) meets every kind of layer and CI stays within its
time.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.visualisation import channel, class_logit, render

# family -> (constructor name, smallest input side); constructors the installed Keras lacks are skipped
FAMILIES = {
    "MobileNetV2": ("MobileNetV2", 32),
    "MobileNetV3Small": ("MobileNetV3Small", 32),
    "MobileNetV3Large": ("MobileNetV3Large", 32),
    "ResNet50": ("ResNet50", 32),
    "ResNet50V2": ("ResNet50V2", 32),
    "EfficientNetB0": ("EfficientNetB0", 32),
    "EfficientNetV2B0": ("EfficientNetV2B0", 32),
    "DenseNet121": ("DenseNet121", 32),
    "VGG16": ("VGG16", 32),
    "Xception": ("Xception", 71),
    "InceptionV3": ("InceptionV3", 75),
    "ConvNeXtTiny": ("ConvNeXtTiny", 32),
}
# an odd side for each: a shape no network's strides divide evenly
ODD = {name: size + (3 if size % 2 == 0 else 4) for name, (_, size) in FAMILIES.items()}

OPTIONS = {
    "smoothgrad": {"samples": 2},
    "integrated_gradients": {"steps": 4},
    "blur_ig": {"steps": 2},
    "guided_ig": {"steps": 2},
    "gradient_shap": {"samples": 2},
    "xrai": {"steps": 1},
    "scorecam": {"batch_size": 64, "channels": 16},  # the 16 most varied channels, not all 2048 of ResNet50
    "ablationcam": {"batch_size": 64, "channels": 16},
    "rise": {"samples": 8, "grid": 4},  # the mask samplers: one batch of masked copies each
    "sobol": {"grid": 2, "designs": 2},
    "kernel_shap": {"samples": 8},
    "lime": {"samples": 8},
}


def nested(base: keras.Model, size: int, classes: int = 3) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def tutorial_model(size: int) -> keras.Model:
    """As Keras' image-classification tutorial builds it: augmentation and rescaling inside the model."""
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.1),
            keras.layers.RandomZoom(0.1),
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Dropout(0.25),
            keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def every_kind_model(size: int, classes: int = 3) -> keras.Model:
    """A small functional base made of every kind of layer the twelve families are built from, each put
    together as ``keras.applications`` puts it, nested in a Sequential head like the family cells: the
    matrix's layer kinds at a fraction of a family's tracing cost, so every CI stage meets all of them.

    - MobileNetV2: zero padding then a 'valid' strided convolution, ReLU6, depthwise convolutions, an
      inverted residual (expand, depthwise, project, add);
    - MobileNetV3: Rescaling with an offset, hard-swish, a squeeze-and-excitation gate whose hard-sigmoid
      is ``ReLU(6)(x + 3) * (1 / 6)`` (keras.ops in the graph) (pooling with keepdims, 1×1 convolutions);
    - EfficientNet: Normalization, swish, a squeeze-and-excitation gate through Reshape and a sigmoid
      convolution, Dropout with a noise shape before the residual add;
    - ResNet50V2: padded max pooling, batch norm that no convolution precedes (pre-activation);
    - InceptionV3: branches joined by Concatenate, 'same' average pooling, 'valid' convolutions and pooling;
    - ConvNeXt: a 7×7 depthwise convolution, LayerNormalization, Dense layers on feature maps, GELU and
      LayerScale.
    """
    from keras.src.applications.convnext import LayerScale  # not public; what ConvNeXt models hold

    L = keras.layers
    inp = keras.Input((size, size, 3))
    # MobileNetV3 / EfficientNet preprocessing
    x = L.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    x = L.Normalization(mean=[0.1, 0.0, -0.1], variance=[0.8, 0.9, 1.1])(x)
    # MobileNetV2 stem and inverted residual
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.Conv2D(16, 3, strides=2, padding="valid", use_bias=False)(x)
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(32, 1, use_bias=False)(x)))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(y)))
    x = L.Add()([x, L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(y))])

    def hard_sigmoid(t):
        return L.ReLU(6.0)(t + 3.0) * (1.0 / 6.0)

    # MobileNetV3: hard-swish and its squeeze-and-excitation gate
    x = L.Activation("hard_swish")(x)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = hard_sigmoid(L.Conv2D(16, 1)(L.ReLU()(L.Conv2D(8, 1)(s))))
    x = L.Multiply()([x, s])
    # EfficientNet: swish, its gate, dropout before the residual add
    y = L.Activation("swish")(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    s = L.Reshape((1, 1, 16))(L.GlobalAveragePooling2D()(y))
    s = L.Conv2D(16, 1, activation="sigmoid")(L.Conv2D(4, 1, activation="swish")(s))
    y = L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(L.multiply([y, s])))
    x = L.Add()([L.Dropout(0.2, noise_shape=(None, 1, 1, 1))(y), x])
    # ResNet50V2: padded max pooling, then a pre-activation block
    x = L.MaxPooling2D(3, strides=2)(L.ZeroPadding2D(1)(x))
    pre = L.Activation("relu")(L.BatchNormalization()(x))
    shortcut = L.Conv2D(24, 1)(pre)
    y = L.Conv2D(24, 3, padding="same", use_bias=False)(L.ZeroPadding2D(0)(pre))
    x = L.Add()([shortcut, L.Conv2D(24, 1)(L.Activation("relu")(L.BatchNormalization()(y)))])
    # InceptionV3: branches, 'same' average pooling, 'valid' convolution and pooling, Concatenate
    b1 = L.Activation("relu")(L.BatchNormalization(scale=False)(L.Conv2D(8, 1, use_bias=False)(x)))
    b2 = L.Conv2D(8, 1, activation="relu")(L.AveragePooling2D(3, strides=1, padding="same")(x))
    b3 = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.Concatenate()([b1, b2, b3])
    x = L.Concatenate()([L.Conv2D(16, 3, strides=2, padding="valid")(x), L.MaxPooling2D(3, strides=2)(x)])
    # ConvNeXt: depthwise 7×7, LayerNormalization, Dense on feature maps, GELU, LayerScale
    y = L.DepthwiseConv2D(7, padding="same")(x)
    y = L.LayerNormalization(epsilon=1e-6)(y)
    y = L.Dense(4 * 40)(y)
    y = L.Activation("gelu")(y)
    y = LayerScale(1e-6 * 1e5, 40)(L.Dense(40)(y))
    x = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, y]))
    return nested(keras.Model(inp, x, name="every_kind"), size, classes)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.c1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")
        self.c2 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.head = keras.layers.Dense(3, activation="softmax", name="head")

    def call(self, x):
        h = self.c1(x / 255.0)
        return self.head(self.gap(h + self.c2(h)))  # keras.ops between the layers


def fast_plan_problems(model: keras.Model, x: np.ndarray, tolerance: float = 1e-3) -> dict:
    """The gradient methods' fast layer plan (batch norm folded, padding inside the convolution, transposed
    convolutions for stride-1 backward passes) against the model's own layers: the input gradient, which runs
    back through every layer the plan rewrites, must agree to ``tolerance`` of its largest value, per image.

    One exception is rounding, not the plan: a max-pooling window whose two largest inputs differ in the 7th
    digit (InceptionV3 at 79 px: 18.926554 and 18.926556 in one image of two) can pick the other one once batch
    norm is folded, and the gradient then flows through another pixel (3 % of the map's largest value, in that
    window's receptive field only). So an image that differs is drawn again; a wrong plan fails both draws."""
    from cnn_exposed.engine import Engine, engine_for
    from cnn_exposed.rules import GRADIENT_RULES

    def differences(images):
        targets = np.array([0, 2], np.int32)
        expected = Engine(model).input_gradients(images, targets).gradients  # no rules: the model's own layers
        got = engine_for(model, None, "logit", GRADIENT_RULES).input_gradients(images, targets).gradients
        scale = np.abs(expected).reshape(len(images), -1).max(axis=1)
        diff = np.where(np.isfinite(got), np.abs(expected - got), np.inf).reshape(len(images), -1).max(axis=1)
        return diff, scale

    diff, scale = differences(x)
    if (diff > tolerance * np.maximum(scale, 1e-30)).any():
        again = np.random.default_rng(1).uniform(0, 255, x.shape).astype(np.float32)
        diff2, scale2 = differences(again)
        both = (diff > tolerance * np.maximum(scale, 1e-30)) & (diff2 > tolerance * np.maximum(scale2, 1e-30))
        if both.any():
            i = int(np.argmax(both))
            return {"fast plan": f"image {i}'s input gradients differ by up to {diff[i]:.3g} and {diff2[i]:.3g} in "
                    f"two draws (values up to {scale[i]:.3g} and {scale2[i]:.3g})"}  # fmt: skip
    return {}


def check_cells(model: keras.Model, size: int, fast_plan: bool = True) -> dict:
    """Run every method and feature visualisation, and (``fast_plan``) compare the fast layer plan with the
    model's own layers; return ``{cell: what went wrong}``."""
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    # first: its fast engine is then the one the gradient methods below find in the cache
    problems = fast_plan_problems(model, x) if fast_plan else {}
    for method in ce.METHODS:
        options = dict(OPTIONS.get(method, {}))
        if method == "occlusion":
            options.update(patch=max(size // 4, 1), stride=max(size // 4, 1))
        try:
            exp = ce.explain(model, x, method, progress=False, **options)
            if exp.maps.shape != (2, size, size):
                problems[method] = f"maps of shape {exp.maps.shape}"
            elif not np.isfinite(exp.maps).all():
                problems[method] = "non-finite maps"
        except Exception as err:  # every refusal or crash is a hole in the matrix
            problems[method] = f"{type(err).__name__}: {str(err)[:300]}"
    try:
        layer = ce.find_last_spatial_layer(model).path
        # filters of the last spatial layer plus class logits (both paths of the objective), one batch
        objective = channel(layer, [0, 1, 0]) + class_logit([1, 1, 2])
        vis = render(model, objective, 3, steps=2, size=size, progress=False)
        if vis.images.shape != (3, size, size, 3) or not np.isfinite(vis.objective).all():
            problems["visualisation"] = f"images {vis.images.shape}, objective {vis.objective}"
    except Exception as err:
        problems["visualisation"] = f"{type(err).__name__}: {str(err)[:300]}"
    return problems


def run_family(family, size):
    ctor = getattr(keras.applications, FAMILIES[family][0], None)
    if ctor is None:
        pytest.skip(f"keras {keras.__version__} has no keras.applications.{FAMILIES[family][0]}")
    keras.utils.set_random_seed(0)
    model = nested(ctor(include_top=False, weights=None, input_shape=(size, size, 3)), size)
    problems = check_cells(model, size, fast_plan=size == ODD[family])  # once per family: it traces
    assert not problems, "\n".join(f"{family} {size}px {cell}: {why}" for cell, why in problems.items())


def cases(families, extra=()):
    """``pytest.param`` (family, size) at each family's odd size, and ``extra`` (family, size) pairs, all marked
    ``family``."""
    pairs = [(name, ODD[name]) for name in families] + list(extra)
    return [pytest.param(name, size, id=f"{name}-{size}", marks=[pytest.mark.family]) for name, size in pairs]


# Four classes of about equal cost (measured: 370-450 s of one worker): pytest-xdist (--dist loadscope) runs a
# class on one worker, so smaller classes balance better.
QUARTERS = [
    ["ConvNeXtTiny", "VGG16", "MobileNetV3Small"],
    ["InceptionV3", "DenseNet121"],
    ["EfficientNetB0", "ResNet50V2", "EfficientNetV2B0"],
    ["MobileNetV3Large", "MobileNetV2", "Xception", "ResNet50"],
]
assert sorted(sum(QUARTERS, [])) == sorted(FAMILIES)


EXTRA = {0: [("MobileNetV2", FAMILIES["MobileNetV2"][1])]}  # the 1×1 last feature map, in the first quarter


def pytest_generate_tests(metafunc):
    """Each ``TestFamilies`` class runs its quarter of the families."""
    quarter = getattr(metafunc.cls, "quarter", None)
    if quarter is not None and "family" in metafunc.fixturenames:
        metafunc.parametrize(("family", "size"), cases(QUARTERS[quarter], EXTRA.get(quarter, ())))


class Families:
    quarter: int

    def test_every_method(self, family, size):
        run_family(family, size)


# TestFamilies1 … TestFamilies4, one class per quarter
for _quarter in range(len(QUARTERS)):
    _name = f"TestFamilies{_quarter + 1}"
    globals()[_name] = pytest.mark.coverage(type(_name, (Families,), {"quarter": _quarter}))


@pytest.mark.coverage
@pytest.mark.parametrize("size", [64, 45])
def test_every_method_on_a_tutorial_model_with_augmentation_inside(size):
    keras.utils.set_random_seed(0)
    problems = check_cells(tutorial_model(size), size)
    assert not problems, "\n".join(f"tutorial {size}px {cell}: {why}" for cell, why in problems.items())


@pytest.mark.coverage
def test_every_method_on_a_model_of_every_kind_of_layer():
    keras.utils.set_random_seed(0)
    problems = check_cells(every_kind_model(37), 37)
    assert not problems, "\n".join(f"every kind {cell}: {why}" for cell, why in problems.items())


@pytest.mark.coverage
def test_every_method_on_a_subclassed_model():
    keras.utils.set_random_seed(0)
    model = Subclassed()
    model(np.zeros((1, 33, 33, 3), np.float32))
    problems = check_cells(model, 33)
    assert not problems, "\n".join(f"subclassed {cell}: {why}" for cell, why in problems.items())
