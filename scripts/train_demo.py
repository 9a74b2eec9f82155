"""Train the shortcut demo model on procedurally generated hotel photos and bundle it in ``data/demo/``.

The training photos (``cnn_exposed.demo.generate(..., "train")``) show rails only in bathrooms, so the
model learns "metal rail -> bathroom" and calls pools with a ladder "bathroom". This script trains it
deterministically on the CPU, measures

* accuracy on held-out clean photos,
* the share of "trap" pools (pools with rails) it calls "bathroom",
* Grad-CAM pointing-game hit rates: on the rail for misclassified trap pools, on the class's own
  object (water, sink, bed) for correctly classified clean photos,

and writes ``demo_weights.npz`` (the weights as plain arrays, loaded into the architecture that
``cnn_exposed.bundled`` builds in code, so every Keras 3 can read them), ``demo_model.json`` (metadata
and the figures), a few PNG images in Keras ``image_dataset_from_directory`` layout and their masks
(``masks.npz``).

With ``--fair`` it trains the negative control instead, ``load_model("demo-fair")``: the same architecture,
seed and schedule on the ``"fair"`` split, where rails appear in every class equally often
(``demo.FAIR_RAIL_RATE``), so a rail says nothing about the class. It writes ``demo_fair_weights.npz`` and
``demo_fair.json`` and leaves the bundled images alone.

Usage::

    python scripts/train_demo.py [--seed 0] [--epochs 10] [--out data/demo] [--fair]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cnn_exposed as ce  # noqa: E402
from cnn_exposed import bundled, demo  # noqa: E402

TRAIN_SIZE = 3000
LEARNING_RATE = 2e-3  # peak; cosine decay to 0 over the run
BATCH_SIZE = 32
CLEAN_EVAL = 600
TRAP_EVAL = 200
BUNDLE_CLEAN_PER_CLASS = 4
BUNDLE_TRAP = 8
POINTING_TOLERANCE = 4  # px: the rail/object mask is grown by this much before the pointing-game test
CAM_LAYER = "base/last_conv"


def build_model() -> keras.Model:
    """The demo architecture (``cnn_exposed.bundled.build_demo_model``: the package builds it the same way)."""
    return bundled.build_demo_model((demo.IMAGE_SIZE, demo.IMAGE_SIZE), len(demo.CLASS_NAMES))


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [0, 1] (the model's ``"scale_0_1"`` preprocessing)."""
    return images.astype("float32") / 255.0


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: int = POINTING_TOLERANCE) -> np.ndarray:
    """Pointing game: is each map's maximum on its mask dilated by ``tolerance`` px? ``(n,)`` bool."""
    return ce.pointing_game(maps, masks, tolerance=tolerance / demo.IMAGE_SIZE)


def area_fraction(masks: np.ndarray, tolerance: int = POINTING_TOLERANCE) -> float:
    """Mean share of the image covered by the dilated masks: the hit rate of a random point."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    return float(np.mean([cv2.dilate(k.astype(np.uint8), kernel).mean() for k in masks]))


def evaluate(model: keras.Model, seed: int) -> dict:
    """Clean accuracy, trap -> bathroom rate and the Grad-CAM pointing game (see the module doc)."""
    bathroom = demo.CLASS_NAMES.index("bathroom")
    x_clean, y_clean, m_clean = demo.generate(CLEAN_EVAL, "clean", seed)
    x_trap, _, m_trap = demo.generate(TRAP_EVAL, "trap", seed)
    p_clean = model.predict(preprocess(x_clean), verbose=0).argmax(1)
    p_trap = model.predict(preprocess(x_trap), verbose=0).argmax(1)
    correct = p_clean == y_clean
    fooled = p_trap == bathroom

    exp_trap = ce.explain(model, preprocess(x_trap[fooled]), "gradcam", progress=False)
    rail_hits = pointing_hits(exp_trap.maps, m_trap["rail"][fooled])
    rail_hits_default = ce.pointing_game(exp_trap.maps, m_trap["rail"][fooled])
    own = demo.object_mask(y_clean, m_clean)
    exp_clean = ce.explain(model, preprocess(x_clean[correct]), "gradcam", progress=False)
    own_hits = pointing_hits(exp_clean.maps, own[correct])
    own_hits_default = ce.pointing_game(exp_clean.maps, own[correct])
    own_labels = y_clean[correct]
    per_class = {name: float(own_hits[own_labels == i].mean()) for i, name in enumerate(demo.CLASS_NAMES)}
    return {
        "clean_accuracy": float(correct.mean()),
        "clean_accuracy_per_class": {
            name: float(correct[y_clean == i].mean()) for i, name in enumerate(demo.CLASS_NAMES)
        },
        "clean_bathrooms_with_rail_accuracy": float(
            correct[(y_clean == bathroom) & m_clean["rail"].any((1, 2))].mean()
        ),
        "clean_bathrooms_without_rail_accuracy": float(
            correct[(y_clean == bathroom) & ~m_clean["rail"].any((1, 2))].mean()
        ),
        "trap_bathroom_rate": float(fooled.mean()),
        "trap_predictions": {name: int((p_trap == i).sum()) for i, name in enumerate(demo.CLASS_NAMES)},
        "pointing_game": {
            "method": "gradcam",
            "layer": exp_trap.layer,
            "tolerance_px": POINTING_TOLERANCE,
            "rail_hit_rate_fooled_trap": float(rail_hits.mean()),
            "rail_random_baseline": area_fraction(m_trap["rail"][fooled]),
            "fooled_trap_images": int(fooled.sum()),
            "own_object_hit_rate_correct_clean": float(own_hits.mean()),
            "own_object_hit_rate_per_class": per_class,
            "own_object_random_baseline": area_fraction(own[correct]),
            "correct_clean_images": int(correct.sum()),
            # The same maps scored with cnn_exposed.pointing_game's default tolerance (7 % of 96 = 7 px).
            "rail_hit_rate_fooled_trap_7px": float(rail_hits_default.mean()),
            "own_object_hit_rate_correct_clean_7px": float(own_hits_default.mean()),
        },
    }


def save_bundle(out: Path, seed: int) -> None:
    """Write the first clean images of each class and the first trap images as PNGs plus their masks."""
    images_dir = out / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    stored: dict[str, np.ndarray] = {}
    x, y, m = demo.generate(BUNDLE_CLEAN_PER_CLASS * len(demo.CLASS_NAMES), "clean", seed)
    xt, yt, mt = demo.generate(BUNDLE_TRAP, "trap", seed)
    for split, (imgs, labels, masks) in {"clean": (x, y, m), "trap": (xt, yt, mt)}.items():
        for i, (img, label) in enumerate(zip(imgs, labels)):
            cls = demo.CLASS_NAMES[int(label)]
            name = f"{split}_{i:03d}"
            folder = images_dir / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            ce.save_png(img, folder / f"{name}.png")
            for kind in demo.MASK_KEYS:
                stored[f"{split}/{cls}/{name}/{kind}"] = masks[kind][i]
    np.savez_compressed(out / "masks.npz", **stored)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=bundled.data_dir() / "demo")
    parser.add_argument("--fair", action="store_true", help="train the negative control (rails in every class)")
    args = parser.parse_args(argv)
    split = "fair" if args.fair else "train"
    if args.fair:
        weights_name, meta_name = bundled.DEMO_FAIR_WEIGHTS, bundled.DEMO_FAIR_METADATA
    else:
        weights_name, meta_name = bundled.DEMO_WEIGHTS, bundled.DEMO_METADATA
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    start = time.perf_counter()
    x_train, y_train, _ = demo.generate(TRAIN_SIZE, split, args.seed)
    data_seconds = time.perf_counter() - start
    model = build_model()
    steps = args.epochs * int(np.ceil(TRAIN_SIZE / BATCH_SIZE))
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x_train = preprocess(x_train)
    model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs, shuffle=True, verbose=2)
    train_seconds = time.perf_counter() - start

    model_path = out / weights_name
    bundled.save_weights(model, model_path)
    figures = evaluate(model, args.seed)
    if not args.fair:
        save_bundle(out, args.seed)
    meta = {
        "class_names": list(demo.CLASS_NAMES),
        "input_size": [demo.IMAGE_SIZE, demo.IMAGE_SIZE],
        "preprocessing": "scale_0_1",
        "seed": args.seed,
        "train_size": TRAIN_SIZE,
        "train_split": split,
        "train_rail_rate_bathroom": demo.FAIR_RAIL_RATE if args.fair else demo.TRAIN_RAIL_RATE,
        "train_rail_rate_other_classes": demo.FAIR_RAIL_RATE if args.fair else 0.0,
        "epochs": args.epochs,
        "learning_rate": f"{LEARNING_RATE} cosine decay to 0",
        "batch_size": BATCH_SIZE,
        "clean_eval_size": CLEAN_EVAL,
        "trap_eval_size": TRAP_EVAL,
        **figures,
        "cam_layer": CAM_LAYER,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "training_seconds": round(train_seconds, 1),
        "training_seconds_data": round(data_seconds, 1),
        "training_seconds_fit": round(train_seconds - data_seconds, 1),
        "weights_bytes": model_path.stat().st_size,
    }
    (out / meta_name).write_text(json.dumps(meta, indent=2) + "\n")

    pg = meta["pointing_game"]
    print(f"clean accuracy            {meta['clean_accuracy']:.3f}  {meta['clean_accuracy_per_class']}")
    print(f"  bathrooms with rail     {meta['clean_bathrooms_with_rail_accuracy']:.3f}")
    print(f"  bathrooms without rail  {meta['clean_bathrooms_without_rail_accuracy']:.3f}")
    print(f"trap pools -> bathroom    {meta['trap_bathroom_rate']:.3f}  {meta['trap_predictions']}")
    print(
        f"Grad-CAM on rail (fooled trap, n={pg['fooled_trap_images']})  {pg['rail_hit_rate_fooled_trap']:.3f}"
        f"  (random point {pg['rail_random_baseline']:.3f})"
    )
    print(
        f"Grad-CAM on own object (correct clean, n={pg['correct_clean_images']})  "
        f"{pg['own_object_hit_rate_correct_clean']:.3f}  {pg['own_object_hit_rate_per_class']}"
        f"  (random point {pg['own_object_random_baseline']:.3f})"
    )
    print(
        f"training time             {meta['training_seconds']:.1f} s  (images {data_seconds:.1f} s, "
        f"fit {train_seconds - data_seconds:.1f} s)"
    )
    print(f"weights file              {meta['weights_bytes'] / 1024:.0f} KiB  ({model_path})")
    return meta


if __name__ == "__main__":
    main()
