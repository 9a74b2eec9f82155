"""Models with several inputs (an image and a metadata vector; a siamese pair of images) and several outputs.

Every method on a multi-input model is compared with a single-input twin: the same layers and weights, with the
side input's value built into the model as a constant (folded into the bias of the first dense layer after the
merge, where it enters). The side inputs of the explained images differ, and the image compared is not the first
of its batch, so that a copy (noisy copy, path point, masked or occluded copy) paired with another image's side
input, or with none, gives a different map. The side inputs feed a ReLU layer with the image's features, so they
change every method's map, gradients included.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

import cnn_exposed as ce

SIZE = 16
HIDDEN = 8
BATCH = 4  # copies per compiled call: batches that mix two images' copies (3 noisy copies, 7 path points, ...)
OPTIONS = {
    "smoothgrad": dict(samples=3),
    "integrated_gradients": dict(steps=6),
    "blur_ig": dict(steps=5, max_sigma=4.0),
    "guided_ig": dict(steps=5),
    "gradient_shap": dict(samples=5, noise=0.1),
    "xrai": dict(steps=3),
    "occlusion": dict(patch=6, stride=5),
    "rise": dict(samples=9, grid=4),
    "sobol": dict(grid=2, designs=2),
    "kernel_shap": dict(samples=9, segmentation="slic", segment_options={"n_segments": 6}),
    "lime": dict(samples=9, segmentation="slic", segment_options={"n_segments": 6}),
    "deconvnet": dict(target=2),  # (its map for the top class is zero on these models)
}
CASES = [(name, OPTIONS.get(name, {})) for name in ce.METHODS] + [
    ("smoothgrad", dict(base="integrated_gradients", samples=2, steps=3)),  # copies of copies
    ("integrated_gradients", dict(steps="auto", tolerance=0.05, max_steps=32)),
]
IDS = [f"{name}-{'-'.join(map(str, opts.values()))}" if opts else name for name, opts in CASES]


def convs(inp, prefix: str = ""):
    h = layers.Conv2D(4, 3, padding="same", activation="relu", bias_initializer="random_normal", name=prefix + "c1")(
        inp
    )
    return layers.Conv2D(6, 3, activation="relu", bias_initializer="random_normal", name=prefix + "c2")(h)


def make_base() -> keras.Model:
    inp = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inp, layers.GlobalAveragePooling2D()(convs(inp)), name="base")


def head(z, classes: int):
    h = layers.Dense(HIDDEN, activation="relu", bias_initializer="random_normal", name="mix")(z)
    return layers.Dense(classes, activation="softmax", bias_initializer="random_normal", name="cls")(h)


def folded_twin(model, features, side_features, first: bool, classes: int, name: str):
    """A single-input model ``image -> features -> mix' -> cls`` whose ``mix'`` holds the side features as a
    constant: its kernel is ``mix``'s rows for the image features, its bias ``mix``'s bias plus the side
    features times the other rows."""
    kernel, bias = model.get_layer("mix").get_weights()
    k = features.output.shape[-1]
    own, other = (kernel[:k], kernel[k:]) if first else (kernel[-k:], kernel[:-k])
    mix = layers.Dense(HIDDEN, activation="relu", name="mix")
    cls = layers.Dense(classes, activation="softmax", name="cls")
    inp = keras.Input((SIZE, SIZE, 3))
    twin = keras.Model(inp, cls(mix(features(inp))), name=name)
    mix.set_weights([own, bias + np.asarray(side_features, np.float32) @ other])
    cls.set_weights(model.get_layer("cls").get_weights())
    return twin


@pytest.fixture(scope="module")
def image_meta():
    """An image + metadata model with two outputs, its twin for metadata ``meta[1]``, and a batch whose image 1
    has that metadata and image 0 other metadata."""
    keras.utils.set_random_seed(7)
    photo, meta = keras.Input((SIZE, SIZE, 3), name="photo"), keras.Input((3,), name="meta")
    g = layers.GlobalAveragePooling2D(name="gap")(convs(photo))
    z = layers.Concatenate(name="merge")([g, meta])
    h = layers.Dense(HIDDEN, activation="relu", bias_initializer="random_normal", name="mix")(z)
    cls = layers.Dense(4, activation="softmax", bias_initializer="random_normal", name="cls")(h)
    aux = layers.Dense(1, name="aux")(h)
    model = keras.Model({"photo": photo, "meta": meta}, [cls, aux], name="image_meta")
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.0, (2, SIZE, SIZE, 3)).astype(np.float32)
    m = (2.0 * rng.normal(size=(2, 3))).astype(np.float32)
    inp = keras.Input((SIZE, SIZE, 3))
    features = keras.Model(inp, layers.GlobalAveragePooling2D(name="gap")(convs(inp)))
    for name in ("c1", "c2"):
        features.get_layer(name).set_weights(model.get_layer(name).get_weights())
    twin = folded_twin(model, features, m[1], True, 4, "twin")
    return model, twin, x, m


def make_siamese():
    base = make_base()
    left, right = keras.Input((SIZE, SIZE, 3), name="left"), keras.Input((SIZE, SIZE, 3), name="right")
    z = layers.Concatenate(name="merge")([base(left), base(right)])
    return keras.Model([left, right], head(z, 3), name="siamese"), base


@pytest.fixture(scope="module")
def siamese():
    """A siamese model (one base shared by both images), twins for each side with the other side's image 1
    built in, and a batch of two pairs."""
    keras.utils.set_random_seed(8)
    model, base = make_siamese()
    rng = np.random.default_rng(4)
    left, right = (rng.uniform(0.0, 1.0, (2, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2))
    twins = {}
    for side, other, first in (("left", right, True), ("right", left, False)):
        own = make_base()
        own.set_weights(base.get_weights())
        constant = np.asarray(base(other[1:]))[0]
        twins[side] = folded_twin(model, own, constant, first, 3, f"twin_{side}")
    return model, twins, left, right


def assert_same(multi, single, i: int) -> None:
    """Image ``i``'s explanation by the multi-input model equals the twin's, to float32 tolerance."""
    assert multi.targets[i] == single.targets[i]
    np.testing.assert_allclose(multi.scores[i], single.scores[i], rtol=1e-4, atol=1e-5)
    pairs = [(multi.raw_maps[i], single.raw_maps[i])]
    if single.attributions is not None:
        pairs.append((multi.attributions[i], single.attributions[i]))
    for got, want in pairs:
        scale = float(np.abs(want).max())
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-4 * scale)


def explain_both(model, twin, inputs: dict, x_twin, name, opts, **ports):
    kept = {k: v.copy() for k, v in inputs.items()}
    multi = ce.explain(model, inputs, name, batch_size=BATCH, progress=False, **ports, **opts)
    for key, value in inputs.items():  # the arrays passed are not modified
        np.testing.assert_array_equal(value, kept[key])
    single = ce.explain(twin, x_twin, name, batch_size=BATCH, progress=False, **opts)
    return multi, single


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_image_and_metadata_match_the_twin_with_the_metadata_built_in(image_meta, name, opts):
    model, twin, x, m = image_meta
    multi, single = explain_both(model, twin, {"photo": x, "meta": m}, x, name, opts, output="cls")
    assert_same(multi, single, 1)
    assert multi.params["input"] == "photo" and multi.params["output"] == "cls"
    if name == "saliency":  # image 0's metadata is not the twin's: its map differs (the check above can fail)
        assert not np.allclose(multi.raw_maps[0], single.raw_maps[0], rtol=1e-2)


# The left image with every method; the right one with one method of each kind (cost).
RIGHT = ("saliency", "smoothgrad", "gradcam", "scorecam", "occlusion", "lrp")
SIAMESE = [("left", *case) for case in CASES] + [("right", *case) for case in CASES if case[0] in RIGHT]
SIAMESE_IDS = [f"left-{i}" for i in IDS] + [f"right-{i}" for i, case in zip(IDS, CASES) if case[0] in RIGHT]


@pytest.mark.parametrize(("side", "name", "opts"), SIAMESE, ids=SIAMESE_IDS)
@pytest.mark.filterwarnings("ignore:integrated gradients. 1 image")
def test_each_image_of_a_siamese_pair_matches_its_twin(siamese, side, name, opts):
    model, twins, left, right = siamese
    x = left if side == "left" else right
    # A list in model.inputs order for the left side, a dict for the right.
    inputs = [left, right] if side == "left" else {"left": left, "right": right}
    kept = [a.copy() for a in (left, right)]
    multi = ce.explain(model, inputs, name, input=side, batch_size=BATCH, progress=False, **opts)
    np.testing.assert_array_equal(left, kept[0])
    np.testing.assert_array_equal(right, kept[1])
    single = ce.explain(twins[side], x, name, batch_size=BATCH, progress=False, **opts)
    assert_same(multi, single, 1)
    if multi.layer is not None:  # the default CAM layer: the shared trunk's, recorded on this side's call
        assert multi.layer == single.layer == "base/c2"


def test_a_single_example_takes_its_side_inputs_without_a_batch_axis(image_meta):
    model, twin, x, m = image_meta
    one = ce.explain(model, {"photo": x[1], "meta": m[1]}, "saliency", output=0, progress=False)
    np.testing.assert_allclose(one.raw_maps[0], ce.explain(twin, x[1], "saliency").raw_maps[0], rtol=1e-4, atol=1e-6)


def test_two_image_inputs_without_input_say_which_there_are(siamese):
    model = siamese[0]
    with pytest.raises(ce.ModelIOError, match=r"2 inputs.*input=.*'left' \(None, 16, 16, 3\).*'right'"):
        ce.GradCAM(model)
    with pytest.raises(ce.ModelIOError, match=r"input='middle' is not one of.*'left'.*'right'"):
        ce.Saliency(model, input="middle")


def test_several_outputs_without_output_say_which_there_are(image_meta):
    model = image_meta[0]
    with pytest.raises(ce.ModelIOError, match=r"2 outputs.*output=.*'cls' \(None, 4\).*'aux' \(None, 1\)"):
        ce.explain(model, {"photo": image_meta[2], "meta": image_meta[3]}, "saliency")
    with pytest.raises(ce.ModelIOError, match=r"output=5 is not one of"):
        ce.Saliency(model, output=5)


def test_output_by_name_and_by_index(image_meta):
    model, _, x, m = image_meta
    inputs = {"photo": x, "meta": m}
    by_name = ce.explain(model, inputs, "saliency", output="aux", target=1, progress=False)
    by_index = ce.explain(model, inputs, "saliency", output=1, target=1, progress=False)
    np.testing.assert_array_equal(by_name.attributions, by_index.attributions)
    # a one-unit output is a binary model: class 1's logit is the unit itself
    np.testing.assert_allclose(by_name.scores, np.asarray(model(inputs)[1])[:, 0], rtol=1e-5, atol=1e-6)
    cls = ce.explain(model, inputs, "saliency", output=0, progress=False)
    assert cls.params["output"] == "cls" and by_index.params["output"] == "aux"
    assert not np.allclose(cls.attributions, by_name.attributions)


def test_images_of_a_multi_input_model_come_with_the_other_inputs(image_meta):
    model, _, x, m = image_meta
    with pytest.raises(ce.ModelIOError, match=r"dict keyed by input name.*'meta': \.\.\., 'photo'"):
        ce.explain(model, x, "saliency", output=0)
    with pytest.raises(ce.ModelIOError, match=r"Missing: \['meta'\]"):
        ce.explain(model, {"photo": x}, "saliency", output=0)
    with pytest.raises(ce.ModelIOError, match=r"one row per image"):
        ce.explain(model, {"photo": x, "meta": m[:1]}, "saliency", output=0)


def test_the_default_cam_layer_is_on_the_explained_images_branch():
    left, right = keras.Input((SIZE, SIZE, 3), name="left"), keras.Input((SIZE, SIZE, 3), name="right")
    a = layers.GlobalAveragePooling2D()(convs(left, "l_"))
    b = layers.GlobalAveragePooling2D()(convs(right, "r_"))
    model = keras.Model([left, right], head(layers.Concatenate()([a, b]), 3))
    assert ce.find_last_spatial_layer(model, "left").path == "l_c2"
    assert ce.find_last_spatial_layer(model, 1).path == "r_c2"
    assert ce.GradCAM(model, input="left").layer_ref.path == "l_c2"
    with pytest.raises(ce.ModelIOError, match=r"'r_c2' is not on the path of input 'left'"):
        ce.GradCAM(model, input="left", layer="r_c2")


def test_deletion_curve_pairs_each_variant_with_its_images_side_inputs(image_meta):
    model, twin, x, m = image_meta
    maps = np.random.default_rng(0).uniform(size=(2, SIZE, SIZE)).astype(np.float32)
    multi = ce.metrics.deletion_curve(model, {"photo": x, "meta": m}, maps, output="cls", steps=4, batch_size=3)
    single = ce.metrics.deletion_curve(twin, x, maps, steps=4, batch_size=3)
    np.testing.assert_allclose(multi.scores[1], single.scores[1], rtol=1e-4, atol=1e-6)
    assert not np.allclose(multi.scores[0], single.scores[0], rtol=1e-3)


def test_lrp_starts_its_composite_on_the_explained_inputs_first_layer():
    """The metadata goes through dense layers that come first in the graph (their branch is deeper): LRP's z^B
    "first" rule belongs to the image's first convolution all the same, as in the twin."""
    keras.utils.set_random_seed(9)
    meta, photo = keras.Input((3,), name="meta"), keras.Input((SIZE, SIZE, 3), name="photo")
    embedded = meta
    for i in range(4):
        embedded = layers.Dense(5, activation="relu", bias_initializer="random_normal", name=f"embed{i}")(embedded)
    embedding = keras.Model(meta, embedded)
    g = layers.GlobalAveragePooling2D(name="gap")(convs(photo))
    model = keras.Model([meta, photo], head(layers.Concatenate()([g, embedded]), 3))
    names = [layer.name for layer in model.layers]
    assert names.index("embed0") < names.index("c1")  # the case this test is about
    rng = np.random.default_rng(5)
    x = rng.uniform(0.0, 1.0, (2, SIZE, SIZE, 3)).astype(np.float32)
    m = (2.0 * rng.normal(size=(2, 3))).astype(np.float32)
    twin = folded_twin(model, keras.Model(photo, g), np.asarray(embedding(m[1:]))[0], True, 3, "twin_lrp")
    multi, single = explain_both(model, twin, {"photo": x, "meta": m}, x, "lrp", {})
    assert_same(multi, single, 1)


def test_filters_of_a_shared_trunk_render_as_in_the_trunk_alone(siamese):
    """A filter of the siamese trunk, optimised through the left image with the right one fixed, is the same
    optimisation as on the trunk alone: the same images (the right image's call is not the one read)."""
    model, _, left, right = siamese
    base = model.get_layer("base")
    options = dict(steps=3, size=SIZE, progress=False, seed=2)
    alone = ce.visualisation.visualise_filters(base, "c2", [0, 3], **options)
    got = ce.visualisation.visualise_filters(
        model, "base/c2", [0, 3], input="left", fixed={"right": right[0]}, **options
    )
    np.testing.assert_array_equal(got.images, alone.images)
    np.testing.assert_allclose(got.objective, alone.objective, rtol=1e-5)


def test_class_visualisation_holds_the_metadata_fixed(image_meta):
    model, twin, _, m = image_meta
    options = dict(steps=3, size=SIZE, progress=False)
    want = ce.visualisation.visualise_classes(twin, [2], **options)
    got = ce.visualisation.visualise_classes(model, [2], output="cls", fixed={"meta": m[1]}, **options)
    np.testing.assert_array_equal(got.images, want.images)
    zeros = ce.visualisation.visualise_classes(model, [2], output="cls", **options)  # metadata zeros: other images
    assert not np.array_equal(zeros.images, want.images)


def test_the_engine_reads_held_side_inputs_and_traces_once(image_meta):
    model, _, x, m = image_meta
    engine = ce.Engine(model, input="photo", output="cls")
    with ce.held_inputs([m]):
        _, probabilities = engine.predict(x)
    np.testing.assert_allclose(probabilities, np.asarray(model({"photo": x, "meta": m})[0]), rtol=1e-4, atol=1e-6)
    with pytest.raises(ce.ModelIOError, match=r"other inputs' values for each of its 2 rows.*held_inputs"):
        engine.predict(x)
    method = ce.GradCAM(model, output="cls", progress=False)
    for n in (2, 1, 2):  # another number of images, and of side-input rows: the same graphs
        method.explain({"photo": x[:n], "meta": m[:n]})
    assert set(method.engine.tracing_counts().values()) == {1}


def test_rule_based_methods_leave_a_metadata_branch_as_it_is():
    """Category ids through an Embedding (no LRP rule): the relevance into the metadata is dropped, so the
    rule-based methods run, and the top-2 targets repeat each image with its own metadata."""
    keras.utils.set_random_seed(10)
    ids, photo = keras.Input((2,), dtype="int32", name="ids"), keras.Input((SIZE, SIZE, 3), name="photo")
    embedded = layers.Flatten()(layers.Embedding(5, 2, name="embed")(ids))
    g = layers.GlobalAveragePooling2D(name="gap")(convs(photo))
    model = keras.Model([photo, ids], head(layers.Concatenate()([g, embedded]), 3))
    rng = np.random.default_rng(6)
    x = rng.uniform(0.0, 1.0, (2, SIZE, SIZE, 3)).astype(np.float32)
    categories = np.array([[4, 0], [1, 3]], np.int32)
    constant = np.asarray(model.get_layer("embed")(categories[1:])).reshape(-1)
    twin = folded_twin(model, keras.Model(photo, g), constant, True, 3, "twin_ids")
    for name, compared in (("lrp", (2, 3)), ("guided_backprop", (2,))):  # (its map for image 1's second is 0)
        multi, single = explain_both(model, twin, {"photo": x, "ids": categories}, x, name, {"target": "top-2"})
        np.testing.assert_array_equal(multi.image_index, [0, 0, 1, 1])
        for i in compared:  # image 1
            assert_same(multi, single, i)


def test_randomisation_check_and_method_table_take_the_side_inputs(image_meta):
    model, twin, x, m = image_meta
    inputs = {"photo": x, "meta": m}
    multi = ce.metrics.randomisation_check(model, inputs, "saliency", layers=["cls", "c2"], output="cls")
    single = ce.metrics.randomisation_check(twin, x, "saliency", layers=["cls", "c2"])
    assert [p.rsplit("/", 1)[-1] for p in single.layers] == multi.layers == ["cls", "c2"]  # (the twin nests c2)
    np.testing.assert_allclose(multi.maps[:, 1], single.maps[:, 1], rtol=1e-3, atol=1e-5)
    rows = ce.metrics.compare_methods(model, inputs, ["saliency"], options={"saliency": {"output": "cls"}})
    curve = ce.metrics.deletion_curve(model, inputs, multi.maps[0], output="cls")
    np.testing.assert_allclose(rows[0]["deletion_auc"], curve.auc.mean(), rtol=1e-6)
