"""The audit on a Ray cluster: the single machine's answer, a killed worker, resuming, the command.

One local cluster (two CPUs) serves the module (pytest-xdist's loadscope keeps a module on one worker). Ray is an
optional extra: this module runs where it is installed (the latest-releases stage installs it with
requirements.txt); every other test runs everywhere, without it.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from test_audit import _answer  # what an audit concludes, as the single-machine tests compare it

import cnn_exposed as ce
from cnn_exposed.audit import audit

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """64 demo photos in class sub-folders, one broken file among them, and their single-machine audit."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    names = ce.demo.CLASS_NAMES
    clean, clean_labels, _ = ce.demo.generate(40, "clean", seed=9)
    trap, trap_labels, _ = ce.demo.generate(24, "trap", seed=9)
    for i, (img, label) in enumerate(zip(np.concatenate([clean, trap]), np.concatenate([clean_labels, trap_labels]))):
        (root / names[label]).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / names[label] / f"{i:03d}.png")
    (root / "pool" / "broken.png").write_bytes(b"not a png")
    loaded = ce.load_model("demo")
    local = audit(loaded, root, batch_size=4, progress=False, min_group=2)
    return root, loaded, local


def test_on_ray_the_audit_survives_a_killed_worker_and_gives_the_single_machine_answer(cluster, folder, tmp_path):
    root, loaded, local = folder
    engine = ce.RayEngine(workers=2)
    records = tmp_path / "records"
    killed = {}

    def kill_a_worker_mid_job():  # once the first batches are in, while most are still to come
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(records.glob("part-*.npz")):
            time.sleep(0.02)
        if engine.workers:
            killed["pid"] = ray.get(engine.workers[0].pid.remote())
            killed["parts"] = len(list(records.glob("part-*.npz")))
            ray.kill(engine.workers[0], no_restart=False)  # the process dies; Ray starts another

    watcher = threading.Thread(target=kill_a_worker_mid_job)
    watcher.start()
    on_ray = audit(loaded, root, batch_size=4, progress=False, min_group=2, engine=engine, checkpoint=records)
    watcher.join()
    assert 0 < killed["parts"] < 16, killed  # 17 batches of 4 (65 files): the worker died mid-job
    assert _answer(on_ray) == _answer(local) and len(_answer(local)) >= 3
    np.testing.assert_array_equal(on_ray.predictions, local.predictions)  # every image once, none lost
    assert on_ray.files == local.files and len(on_ray.files) == 64
    assert [f for f, _ in on_ray.skipped] == [str(root / "pool" / "broken.png")]
    assert len(list(records.glob("part-*.npz"))) == 17  # one record file per batch, none twice


def test_on_ray_an_interrupted_audit_resumes(cluster, folder, tmp_path, monkeypatch):
    """Half done on this machine (the records an interrupted run left), the rest on Ray: the same answer."""
    from cnn_exposed.checkpoint import Checkpoint

    root, loaded, local = folder
    save, count = Checkpoint.save, []

    def save_then_stop_after_eight(self, records):  # as Ctrl-C after the eighth batch would
        save(self, records)
        count.append(1)
        if len(count) == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_stop_after_eight)
    with pytest.raises(KeyboardInterrupt):
        audit(loaded, root, batch_size=4, progress=False, checkpoint=tmp_path / "records")
    monkeypatch.undo()
    resumed = audit(loaded, root, batch_size=4, progress=False, min_group=2, engine="ray",
                    checkpoint=tmp_path / "records")  # fmt: skip
    assert resumed.resumed == 32 and _answer(resumed) == _answer(local)


def test_the_audit_command_on_ray(cluster, folder, tmp_path, capsys):
    from cnn_exposed.cli import main

    root, loaded, _ = folder
    assert main(["audit", "demo", str(root), "--out", str(tmp_path / "out"), "--ray", "--batch-size", "8"]) == 0
    assert "audited 64 image(s), skipped 1." in capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "audit.json").read_text())
    local = audit(loaded, root, progress=False)  # the command's settings, on this machine
    assert [c["files"] for c in data["candidates"]] == [[str(local.files[i]) for i in c.indices]
                                                         for c in local.candidates]  # fmt: skip
    assert [c["p_value"] for c in data["candidates"]] == pytest.approx([c.p_value for c in local.candidates])


def _same_maps(a, b) -> None:
    """Two explanations of the same images agree map for map (and in everything else that is per map), to float
    precision: a worker rebuilds the model from a .keras file and runs it with one CPU thread."""
    np.testing.assert_array_equal(a.image_index, b.image_index)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)
    np.testing.assert_allclose(a.raw_maps, b.raw_maps, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5, atol=1e-7)
    assert a.files == b.files and a.skipped == b.skipped
    assert (a.labels is None) == (b.labels is None) and (a.labels is None or (a.labels == b.labels).all())


@pytest.mark.parametrize(
    ("method", "options", "target"),
    [
        ("rise", {"samples": 64, "seed": 3}, "true"),  # the folder's labels; random masks drawn from the seed
        ("deeplift", {}, 1),  # XLA-fused rules: the short batches are padded on the workers
    ],
)
def test_explain_on_ray_equals_explain_here_map_for_map(cluster, folder, method, options, target):
    root, loaded, _ = folder
    here = ce.explain(loaded, root, method, target=target, batch_size=8, progress=False, **options)
    with pytest.warns(UserWarning, match="broken.png"):  # the broken file is reported on the driver too
        on_ray = ce.explain(loaded, root, method, target=target, batch_size=8, progress=False, engine="ray", **options)
    _same_maps(on_ray, here)
    assert len(on_ray) == 64 and [f for f, _ in on_ray.skipped] == [str(root / "pool" / "broken.png")]


def test_explain_batches_on_ray_arrive_in_order_for_arrays_and_per_image_targets(cluster):
    loaded = ce.load_model("demo")
    images, labels, _ = ce.demo.generate(21, "clean", seed=4)
    classes = (labels + 1) % 3  # one class per image, not the predicted one
    here = list(ce.explain_batches(loaded, images, "lrp", target=classes, batch_size=8, progress=False))
    engine = ce.RayEngine(workers=2, in_flight=3)
    on_ray = list(ce.explain_batches(loaded, images, "lrp", target=classes, batch_size=8, progress=False,
                                     engine=engine))  # fmt: skip
    assert [len(e) for e in on_ray] == [8, 8, 5]  # the last, short batch padded on its worker and cut back
    for a, b in zip(on_ray, here):
        _same_maps(a, b)
    np.testing.assert_array_equal(np.concatenate([e.targets for e in on_ray]), classes)


def test_explain_on_ray_takes_every_file_of_a_model_of_any_size_at_the_first_files_size(cluster, tmp_path):
    """A model without a fixed input size: files of several sizes are all taken at the first readable file's size,
    on every worker (a worker does not pick its own first file's)."""
    import keras
    from PIL import Image

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(0)
    (tmp_path / "0_broken.png").write_bytes(b"")
    for i, side in enumerate([20, 28, 36, 44, 28, 20]):
        Image.fromarray(rng.integers(0, 255, (side, side + 4, 3), dtype=np.uint8)).save(tmp_path / f"{i + 1}.png")
    here = ce.explain(model, tmp_path, "gradcam", batch_size=2, progress=False)
    with pytest.warns(UserWarning, match="0_broken.png"):
        on_ray = ce.explain(model, tmp_path, "gradcam", batch_size=2, progress=False, engine=ce.RayEngine(workers=2))
    assert on_ray.images.shape[1:3] == (20, 24)
    _same_maps(on_ray, here)


def test_the_explain_command_on_ray(cluster, folder, tmp_path, capsys):
    from cnn_exposed.cli import main

    root, _, _ = folder
    for name, extra in (("here", []), ("ray", ["--ray"])):
        out = tmp_path / name
        assert main(["explain", "demo", str(root), "--method", "gradcam,lrp", "--out", str(out), *extra]) == 0
        assert "explained 64 image(s), skipped 1." in capsys.readouterr().out
    here, ray_ = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("here", "ray"))
    assert ray_["images"] == here["images"] and ray_["skipped"] == here["skipped"]


def test_on_ray_the_workers_read_files_at_a_uri(cluster, folder):
    """The workers open the URI's filesystem themselves (file:// here; s3:// and gs:// take the same path)."""
    pytest.importorskip("pyarrow")
    root, loaded, local = folder
    uri = "file://" + root.as_posix()
    with pytest.warns(UserWarning, match="broken.png"):
        on_ray = ce.explain(loaded, uri, "gradcam", batch_size=16, progress=False, engine=ce.RayEngine(workers=2))
    here = ce.explain(loaded, root, "gradcam", batch_size=16, progress=False)
    np.testing.assert_allclose(on_ray.maps, here.maps, atol=1e-6)
    assert [str(f) for f in on_ray.files] == [f"{uri}/{f.parent.name}/{f.name}" for f in here.files]
    audited = audit(loaded, uri, batch_size=4, progress=False, min_group=2, engine="ray")
    assert [(c.indices.tolist(), c.p_value) for c in audited.candidates] == [
        (c.indices.tolist(), c.p_value) for c in local.candidates
    ]


def test_explain_on_ray_of_files_none_of_which_can_be_read_says_so(cluster, tmp_path):
    broken = [tmp_path / "a.png", tmp_path / "b.jpg"]
    broken[0].write_bytes(b"")
    broken[1].write_bytes(b"not a jpeg")
    with (
        pytest.warns(UserWarning, match="a.png"),
        pytest.raises(ce.InputError, match="None of the 2 files could be read"),
    ):
        ce.explain(ce.load_model("demo"), broken, "gradcam", engine=ce.RayEngine(workers=1))
