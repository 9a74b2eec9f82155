"""The audit's cost and memory at scale: ``cnn_exposed.audit`` over folders of 1,000 and 10,000 generated demo
images (a quarter of them trap pools), against the bare explanation pass over the same files.

    python benchmarks/audit.py [--sizes 1000 10000] [--batch-size 64] [--folder /tmp/cnn-exposed-bench-audit] [--ray]

The images are generated once into ``--folder`` (class sub-folders of PNG files, as ``cnn-exposed audit``
reads them), in chunks, so the benchmark itself never holds them all. Each measurement runs in a fresh
process, so its peak resident memory (``ru_maxrss``) is its own: the bare pass reads the files a batch at a
time and explains them with Grad-CAM, keeping nothing; the audit does the same plus everything it adds. For
each size the two run back to back, and the ratio (audit / bare) is what to compare, on this shared machine.

With ``--ray`` (the ``ray`` extra installed), the audit also runs on a local Ray cluster with 1 and 2 CPU workers
(``cnn_exposed.RayEngine``), each in its own process after the cluster has started: its time includes the
workers' start (importing TensorFlow, building the model and its passes), which a long run pays once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import cnn_exposed as ce
from cnn_exposed.images import collect_images, read_image, resize_image

mode, folder, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
loaded = ce.load_model("demo")
files, classes = collect_images([folder])
labels = np.array([loaded.class_names.index(classes[f.label]) for f in files])
paths = [f.path for f in files]
start = time.perf_counter()
if mode == "bare":
    for i in range(0, len(paths), batch):
        x = np.stack([resize_image(read_image(p), loaded.input_size) for p in paths[i : i + batch]])
        ce.explain(loaded.model, x, "gradcam", preprocess=loaded.preprocess, batch_size=batch, progress=False)
    found = None
else:
    engine = None
    if mode.startswith("ray"):
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        engine = ce.RayEngine(workers=int(mode[3:]))
        start = time.perf_counter()
    found = ce.audit(loaded.model, paths, labels, preprocess=loaded.preprocess, class_names=loaded.class_names,
                     batch_size=batch, progress=False, engine=engine)
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
top = found.summary(1)[0] if found is not None else ""
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "images": len(paths), "top": top}))
"""


def make_folder(folder: Path, count: int) -> None:
    """``count`` demo images (3/4 from the "clean" split, 1/4 trap pools), as ``demo.generate`` draws them."""
    from PIL import Image

    from cnn_exposed import demo

    done = folder.parent / f"{folder.name}.done"  # beside the folder: inside, it would not be all class folders
    if done.is_file() and int(done.read_text()) == count:
        return
    traps = count // 4
    for split, n in (("clean", count - traps), ("trap", traps)):
        for i in range(n):  # image i depends only on (split, seed, i): one at a time, never all
            label = 0 if split == "trap" else i % len(demo.CLASS_NAMES)
            image, _ = demo._one_image(split, label, demo._image_rng(split, 11, i))
            sub = folder / demo.CLASS_NAMES[label]
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(sub / f"{split}_{i:05d}.png")
    done.write_text(str(count))


def measure(mode: str, folder: Path, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(batch)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/cnn-exposed-bench-audit"))
    parser.add_argument("--ray", action="store_true", help="also on a local Ray cluster, 1 and 2 CPU workers")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        folder = args.folder / str(size)
        t = time.perf_counter()
        make_folder(folder, size)
        print(f"{size} images ready in {folder} ({time.perf_counter() - t:.0f} s)", flush=True)
        bare = measure("bare", folder, args.batch_size)
        full = measure("audit", folder, args.batch_size)
        rows.append((size, bare, full))
        print(f"  bare explanation pass: {bare['seconds']:.1f} s, peak {bare['peak_mb']:.0f} MB", flush=True)
        print(f"  audit:                 {full['seconds']:.1f} s, peak {full['peak_mb']:.0f} MB", flush=True)
        print(f"  {full['top']}", flush=True)
        for workers in (1, 2) if args.ray else ():
            on_ray = measure(f"ray{workers}", folder, args.batch_size)
            print(f"  audit on Ray, {workers} worker(s): {on_ray['seconds']:.1f} s "
                  f"({on_ray['seconds'] / full['seconds']:.2f}x the single-machine audit; "
                  f"{size / on_ray['seconds']:.0f} images/s); the same top candidate: {on_ray['top'] == full['top']}",
                  flush=True)  # fmt: skip
    print("\n| images | bare pass s | audit s | audit / bare | bare peak MB | audit peak MB | audit - bare MB |")
    print("|---|---|---|---|---|---|---|")
    for size, bare, full in rows:
        print(
            f"| {size} | {bare['seconds']:.1f} | {full['seconds']:.1f} | {full['seconds'] / bare['seconds']:.2f}x | "
            f"{bare['peak_mb']:.0f} | {full['peak_mb']:.0f} | {full['peak_mb'] - bare['peak_mb']:+.0f} |"
        )


if __name__ == "__main__":
    main()
