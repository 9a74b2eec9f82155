"""Whatever holds the images: tf.data datasets, PyDatasets, generators and files give what arrays give."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import cnn_exposed as ce
from cnn_exposed import metrics
from conftest import small_cnn

SIZE, CLASSES, PER_CLASS = 16, 3, 5


def scale(x):
    return np.asarray(x, np.float32) / 255.0


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    return small_cnn(SIZE, CLASSES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of class sub-folders of small PNGs, as image_dataset_from_directory reads them."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ["cat", "dog", "fox"]:
        (root / name).mkdir()
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(folder):
    """The folder as keras loads it (batches of 4, in file order), and the same images and labels as arrays,
    read independently with Pillow."""
    ds = keras.utils.image_dataset_from_directory(folder, image_size=(SIZE, SIZE), batch_size=4, shuffle=False)
    paths = list(ds.file_paths)
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    y = np.asarray([["cat", "dog", "fox"].index(p.split("/")[-2]) for p in paths])
    return ds, x, y, paths


def test_an_image_dataset_from_directory_gives_the_maps_of_the_same_images_as_an_array(model, photos):
    ds, x, y, _ = photos
    for method in ("gradcam", "saliency"):
        want = ce.explain(model, x, method, preprocess=scale, progress=False)
        got = ce.explain(model, ds, method, preprocess=scale, progress=False)
        np.testing.assert_allclose(got.maps, want.maps, atol=1e-5)
        np.testing.assert_array_equal(got.targets, want.targets)
        np.testing.assert_array_equal(got.image_index, np.arange(len(x)))
        np.testing.assert_array_equal(got.labels, y)  # the labels that came with the images
        np.testing.assert_array_equal(got.images, x)  # drawn over the images as given
    unbatched = ce.explain(model, ds.unbatch(), "gradcam", preprocess=scale, progress=False, batch_size=6)
    want = ce.explain(model, x, "gradcam", preprocess=scale, progress=False)
    np.testing.assert_allclose(unbatched.maps, want.maps, atol=1e-5)


def test_weighted_and_dict_elements_and_a_pydataset_read_alike(model, photos):
    _, x, y, _ = photos
    want = ce.explain(model, x, "saliency", preprocess=scale, progress=False).maps
    name = model.inputs[0].name
    weighted = tf.data.Dataset.from_tensor_slices((x, y, np.ones(len(y), np.float32))).batch(6)
    keyed = tf.data.Dataset.from_tensor_slices(({name: x}, y)).batch(4)
    tfds_style = tf.data.Dataset.from_tensor_slices({"image": x, "label": y}).batch(5)

    class Photos(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i * 5 : (i + 1) * 5], keras.utils.to_categorical(y[i * 5 : (i + 1) * 5], CLASSES)

    for source in (weighted, keyed, tfds_style, Photos()):
        got = ce.explain(model, source, "saliency", preprocess=scale, progress=False)
        np.testing.assert_allclose(got.maps, want, atol=1e-5)
        np.testing.assert_array_equal(got.labels, y)


def test_target_true_explains_the_labels_sparse_or_one_hot(model, folder, photos):
    _, x, y, _ = photos
    want = ce.explain(model, x, "gradcam", target=y, preprocess=scale, progress=False)
    assert (want.targets != want.predictions).any()  # the true class is not simply the predicted one
    for mode in ("int", "categorical"):
        ds = keras.utils.image_dataset_from_directory(
            folder, image_size=(SIZE, SIZE), batch_size=4, shuffle=False, label_mode=mode
        )
        got = ce.explain(model, ds, "gradcam", target="true", preprocess=scale, progress=False)
        np.testing.assert_array_equal(got.targets, y)
        np.testing.assert_allclose(got.maps, want.maps, atol=1e-5)
        assert got.params["target"] == "true"
    with pytest.raises(ce.TargetError, match="come without labels"):
        ce.explain(model, tf.data.Dataset.from_tensor_slices(x).batch(4), "gradcam", target="true")
    with pytest.raises(ce.TargetError, match="come without labels"):
        ce.explain(model, x, "gradcam", target="true")
    odd = tf.data.Dataset.from_tensor_slices((x, {"a": y, "b": y})).batch(8)  # labels that are not classes
    np.testing.assert_array_equal(ce.explain(model, odd, "gradcam", preprocess=scale).targets, want.predictions)
    with pytest.raises(ce.TargetError, match="labels have shape"):
        ce.explain(model, odd, "gradcam", target="true")


def test_a_generator_is_consumed_once(model, photos):
    _, x, y, _ = photos
    yields = []

    def batches():
        for start in range(0, len(x), 4):
            yields.append(start)
            yield x[start : start + 4], y[start : start + 4]

    gen = batches()
    got = ce.explain(model, gen, "saliency", preprocess=scale, progress=False)
    assert yields == [0, 4, 8, 12] and len(got) == len(x)
    with pytest.raises(ce.InputError, match="yielded no images"):
        ce.explain(model, gen, "saliency", preprocess=scale)  # nothing is left, and it says so
    yields.clear()
    rows = metrics.compare_methods(
        model, batches(), ["saliency", "gradcam"], preprocess=scale, curve_options={"steps": 4}
    )
    assert yields == [0, 4, 8, 12]  # every method scores each batch: one pass
    np.testing.assert_allclose(
        [r["deletion_auc"] for r in rows],
        [r["deletion_auc"] for r in metrics.compare_methods(model, x, ["saliency", "gradcam"], preprocess=scale,
                                                            curve_options={"steps": 4})],
        atol=1e-6,
    )  # fmt: skip


def test_explain_batches_is_lazy_and_yields_batch_sized_explanations(model, photos):
    _, x, y, _ = photos
    read = []

    def failing_after_the_first_batch():
        read.append(0)
        yield x[:4], y[:4]
        raise RuntimeError("the second batch was asked for")

    batches = ce.explain_batches(model, failing_after_the_first_batch(), "gradcam", preprocess=scale)
    assert read == []  # nothing is read before the first batch is asked for
    first = next(batches)
    assert len(first) == 4 and first.maps.shape == (4, SIZE, SIZE)
    np.testing.assert_allclose(first.maps, ce.explain(model, x[:4], "gradcam", preprocess=scale).maps, atol=1e-5)
    with pytest.raises(RuntimeError, match="second batch"):
        next(batches)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    parts = list(ce.explain_batches(model, ds, "gradcam", preprocess=scale, target=np.flip(y)))
    assert [len(p) for p in parts] == [4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([p.image_index for p in parts]), np.arange(len(x)))
    np.testing.assert_array_equal(np.concatenate([p.targets for p in parts]), np.flip(y))  # indexed by position


def test_files_and_folders_are_read_resized_and_broken_ones_skipped(model, folder, photos, tmp_path):
    _, x, y, paths = photos
    big = tmp_path / "big.png"
    Image.fromarray(np.repeat(np.repeat(x[0].astype(np.uint8), 2, 0), 2, 1)).save(big)  # 32 px: resized
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    files = [paths[0], str(broken), paths[1], big]
    with pytest.warns(UserWarning, match="broken.png"):
        got = ce.explain(model, files, "saliency", preprocess=scale, progress=False)
    np.testing.assert_array_equal(got.image_index, [0, 2, 3])  # positions in the list: the broken file's left out
    assert got.skipped[0][0] == str(broken) and got.files[2] == big
    expected = ce.explain(model, np.stack([x[0], x[1], x[0]]), "saliency", preprocess=scale).maps
    np.testing.assert_allclose(got.maps, expected, atol=1e-5)
    labelled = ce.explain(model, folder, "gradcam", target="true", preprocess=scale, progress=False)
    np.testing.assert_array_equal(labelled.targets, y)  # class sub-folders are labels
    with pytest.raises(ce.InputError, match="None of the 1 files"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ce.explain(model, [broken], "saliency")


def test_files_skipped_after_the_last_readable_batch_are_listed_too(model, photos, tmp_path):
    _, _, _, paths = photos
    broken = [tmp_path / f"broken{i}.png" for i in range(3)]
    for b in broken:
        b.write_bytes(b"")
    files = [paths[0], paths[1], paths[2], broken[0], broken[1], broken[2]]  # batches of 2: the last two unreadable
    with pytest.warns(UserWarning, match="broken"):
        parts = list(ce.explain_batches(model, files, "saliency", preprocess=scale, batch_size=2, progress=False))
    assert [list(p.image_index) for p in parts] == [[0, 1], [2]]
    assert [[f for f, _ in p.skipped] for p in parts] == [[], [str(b) for b in broken]]


def test_metrics_and_tcav_on_a_dataset_equal_the_array_result(model, photos):
    ds, x, y, _ = photos
    exp = ce.explain(model, x, "gradcam", preprocess=scale, progress=False)
    for curve in (metrics.deletion_curve, metrics.insertion_curve):
        want = curve(model, x, exp.maps, preprocess=scale, steps=4)
        got = curve(model, ds, exp.maps, preprocess=scale, steps=4)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        by_label = curve(model, ds, exp.maps, preprocess=scale, steps=4, target="true")
        np.testing.assert_array_equal(by_label.targets, y)
    np.testing.assert_allclose(
        metrics.random_target_check(model, ds, "saliency", preprocess=scale, seed=2),
        metrics.random_target_check(model, x, "saliency", preprocess=scale, seed=2),
        atol=1e-6,
    )
    sanity = metrics.randomisation_check(model, ds, "saliency", preprocess=scale)
    np.testing.assert_allclose(sanity.maps, metrics.randomisation_check(model, x, "saliency", preprocess=scale).maps)
    with pytest.raises(ValueError, match="10 maps for more than 10 images"):
        metrics.deletion_curve(model, ds, exp.maps[:10], preprocess=scale, steps=4)
    with pytest.raises(ValueError, match="16 maps for 15 images"):
        metrics.deletion_curve(model, ds, np.concatenate([exp.maps, exp.maps[:1]]), preprocess=scale, steps=4)
    options = dict(runs=3, preprocess=scale, random_images=x, seed=1)
    want = ce.tcav(model, None, x[:5], x[5:], 1, **options)
    got = ce.tcav(model, None, ds.unbatch().take(5), ds.unbatch().skip(5).batch(5), 1, **options)
    assert (got.score, got.p_value) == (want.score, want.p_value)
    np.testing.assert_array_equal(got.random_scores, want.random_scores)


def test_the_audit_of_a_dataset_or_generator_equals_the_audit_of_the_array(model, folder, photos):
    _, photo_x, photo_y, paths = photos
    of_folder = ce.audit(model, folder, preprocess=scale, batch_size=4, progress=False)  # labelled by sub-folders
    np.testing.assert_array_equal(of_folder.labels, photo_y)
    assert [str(f) for f in of_folder.files] == paths
    of_array = ce.audit(model, photo_x, photo_y, preprocess=scale, batch_size=4, progress=False)
    np.testing.assert_array_equal(of_folder.predictions, of_array.predictions)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, SIZE, SIZE, 3)).astype(np.float32)  # integer pixels: spooled as uint8
    x[-1, 0, 0, 0] = 0.5  # ... but the last batch is not, and the spool widens to float32
    y = rng.integers(0, CLASSES, len(x))
    want = ce.audit(model, x, y, preprocess=scale, batch_size=8, progress=False)
    assert want.candidates  # there is something to compare
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    generator = ((x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8))
    for source in (ds, generator):
        got = ce.audit(model, source, preprocess=scale, batch_size=8, progress=False)  # labels from the data
        np.testing.assert_array_equal(got.predictions, want.predictions)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert len(got.candidates) == len(want.candidates)
        for a, b in zip(got.candidates, want.candidates):
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.thumbnails, b.thumbnails)
            assert (a.flip_rate, a.control_flip_rate, a.p_value) == (b.flip_rate, b.control_flip_rate, b.p_value)
    with pytest.raises(ce.InputError, match="true class of every image"):
        ce.audit(model, tf.data.Dataset.from_tensor_slices(x).batch(8), progress=False)
