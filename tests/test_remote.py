"""Images on a filesystem pyarrow reads (s3://, gs://, ...), tested through file:// URIs, which take the same path
through pyarrow (no object store is reachable offline): folders of class sub-folders, broken files, the audit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cnn_exposed as ce
from cnn_exposed.audit import audit

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 demo photos in class sub-folders and a broken file, as a local folder and as a file:// URI."""
    root = tmp_path_factory.mktemp("remote")
    images, labels, _ = ce.demo.generate(24, "clean", seed=2)
    for i, (img, label) in enumerate(zip(images, labels)):
        (root / ce.demo.CLASS_NAMES[label]).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / ce.demo.CLASS_NAMES[label] / f"{i:02d}.png")
    (root / "pool" / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return root, "file://" + root.as_posix(), ce.load_model("demo")


def test_explain_reads_a_folder_at_a_uri_as_the_local_folder(photos):
    root, uri, loaded = photos
    with pytest.warns(UserWarning, match="zz_broken"):
        here = ce.explain(loaded, root, "gradcam", target="true", batch_size=8, progress=False)
    with pytest.warns(UserWarning, match="zz_broken"):
        there = ce.explain(loaded, uri, "gradcam", target="true", batch_size=8, progress=False)
    np.testing.assert_array_equal(there.labels, here.labels)  # the class sub-folders, read through pyarrow
    np.testing.assert_array_equal(there.maps, here.maps)
    assert [str(f) for f in there.files] == [f"{uri}/{f.parent.name}/{f.name}" for f in here.files]
    assert [f for f, _ in there.skipped] == [f"{uri}/pool/zz_broken.jpg"]


def test_the_audit_of_a_uri_equals_the_local_audit(photos):
    root, uri, loaded = photos
    here = audit(loaded, root, batch_size=8, progress=False, min_group=2)
    there = audit(loaded, uri, batch_size=8, progress=False, min_group=2)
    assert [(c.true_class, c.predicted_class, c.indices.tolist(), c.p_value) for c in there.candidates] == [
        (c.true_class, c.predicted_class, c.indices.tolist(), c.p_value) for c in here.candidates
    ]
    assert len(there.candidates) >= 2 and str(there.files[0]).startswith("file://")
    assert [f for f, _ in there.skipped] == [f"{uri}/pool/zz_broken.jpg"]


def test_the_explain_command_takes_a_uri(photos, tmp_path, capsys):
    from cnn_exposed.cli import main

    _, uri, _ = photos
    assert main(["explain", "demo", uri, "--method", "gradcam", "--out", str(tmp_path)]) == 0
    assert "explained 24 image(s), skipped 1." in capsys.readouterr().out
