"""Attribution speed: every method against its floor and against tf-keras-vis, side by side in one run.

    python benchmarks/attribution.py [--size 224] [--batch 8] [--repeats 3] [--quick]

Model: MobileNetV2 with random weights (no download), 224x224, a batch of 8 images. For each method:

- floor: the same number of forward+backward (or forward-only) passes of the same batch through a bare
  ``tf.function`` gradient of the model's output, measured in the same run;
- ours: ``cnn_exposed`` with ``batch_size`` = the batch;
- tf-keras-vis: the same method where it has one.

Each timing is the best of ``--repeats`` runs after one warm-up (tracing excluded), and the runs of the
three are interleaved so that load from other processes hits them alike; "paired median" is the median
over rounds of ours / floor timed in the same round. Targets (issue 2): gradient
methods within 1.2x of their floor, SmoothGrad and Grad-CAM at least 3x faster than tf-keras-vis,
integrated gradients (50 steps) within 1.2x of 51 forward+backward passes; (issue 7) LRP within 1.5x; (issue 22)
DeepLIFT within 1.2x of one forward+backward pass of the batch [x; x′] per baseline;
(issue 16) saliency, SmoothGrad and integrated gradients at or below 1.0x their floor (the fast layer plan),
SmoothGrad at least 3x faster than tf-keras-vis, and steps="auto" meeting 1 % completeness on every image of
the demo and of a sharp model with fewer passes than the fewest fixed steps that would; (issue 23) the CAM
family within 1.1x of the passes each needs: one forward+backward pass (HiResCAM, XGrad-CAM, EigenGrad-CAM),
one forward pass (Eigen-CAM, FEM; plus the SVD) and one forward pass per ablated channel (Ablation-CAM; ours
only runs the layers after the ablated one), and Blur IG, Guided IG, GradientSHAP and XRAI within 1.1x of
their gradient passes (XRAI's time includes its Felzenszwalb segmentations, which run in threads beside the
passes; their time alone is printed too). ``--only cams`` runs the CAM family, ``--only paths`` the four path
methods.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cnn_exposed as ce  # noqa: E402

CAMS = ("eigencam", "eigengradcam", "hirescam", "xgradcam", "ablationcam", "fem")


def best_of(fns: dict, repeats: int) -> tuple[dict, float]:
    """Warm each callable once, then time them interleaved: best (minimum) seconds per name, and the median
    over rounds of ours / floor measured in the same round (steadier than best / best on a shared machine)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    paired = float(np.median(np.asarray(times["ours"]) / np.asarray(times["floor"])))
    return {name: min(t) for name, t in times.items()}, paired


def sharp_model(size: int = 32) -> keras.Model:
    """A model whose paths are hard to integrate: large random weights and biases, so a path crosses many ReLU
    kinks (the issue's pretrained face model needed up to ~1,000 steps; none can be downloaded here)."""
    keras.utils.set_random_seed(4)
    init = keras.initializers.RandomNormal(stddev=1.5, seed=4)
    conv = {"activation": "relu", "kernel_initializer": init, "bias_initializer": init}
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(16, 3, **conv),
            keras.layers.Conv2D(16, 3, strides=2, **conv),
            keras.layers.Conv2D(16, 3, **conv),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init),
        ]
    )


def auto_steps(repeats: int, tolerance: float = 0.01) -> None:
    """steps="auto" against the fewest fixed steps (powers of two) that meet ``tolerance`` on every image."""
    loaded = ce.load_model("demo")
    demo_images, _, _ = ce.demo.load_images("clean")
    trap, _, _ = ce.demo.load_images("trap")
    contrast = np.geomspace(0.1, 8, 16).astype(np.float32).reshape(-1, 1, 1, 1)
    sharp_x = np.random.default_rng(5).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32) * contrast
    cases = {
        "demo (20 bundled images)": (loaded.model, np.concatenate([demo_images, trap]), loaded.preprocess),
        "sharp model (16 images)": (sharp_model(), sharp_x, None),
    }
    print(f"\nintegrated gradients, steps='auto' (tolerance {tolerance:.0%}) against fixed steps")
    for name, (model, images, prep) in cases.items():
        auto = ce.IntegratedGradients(model, steps="auto", tolerance=tolerance, preprocess=prep, progress=False)
        exp = auto.explain(images)
        steps = np.asarray(exp.params["steps"])
        fixed_n = None
        for n in (16, 32, 64, 128, 256, 512, 1024, 2048):
            fixed = ce.IntegratedGradients(model, steps=n, preprocess=prep, progress=False)
            if (fixed.explain(images).completeness_error <= tolerance).all():
                fixed_n = n
                break
        print(
            f"  {name}: auto steps per image {sorted(steps.tolist())}, worst error "
            f"{exp.completeness_error.max():.2%}; {exp.params['passes']} passes"
        )
        if fixed_n is None:
            print("    no fixed setting up to 2048 steps meets it on every image")
            continue
        fixed = ce.IntegratedGradients(model, steps=fixed_n, preprocess=prep, progress=False)
        runs = {"ours": lambda a=auto, i=images: a.explain(i), "floor": lambda f=fixed, i=images: f.explain(i)}
        t, _ = best_of(runs, repeats)
        passes = len(images) * (fixed_n + 1)
        print(
            f"    fewest fixed steps meeting it on every image: {fixed_n} ({passes} passes): auto uses "
            f"{exp.params['passes'] / passes:.2f}x the passes; time auto {t['ours']:.2f}s, fixed {t['floor']:.2f}s "
            f"({t['ours'] / t['floor']:.2f}x)"
        )


def path_methods(args, record, floor, ours, x, only) -> None:
    """Blur IG, Guided IG, GradientSHAP and XRAI against the gradient passes each needs."""
    n = args.blur_steps
    record(f"blur_ig ({n})", f"{n} fwd+bwd", {"floor": floor(n), "ours": ours("blur_ig", steps=n)})
    n = args.guided_steps
    record(f"guided_ig ({n})", f"{n} fwd+bwd", {"floor": floor(n), "ours": ours("guided_ig", steps=n)})
    n = args.shap_samples
    record(f"gradient_shap ({n})", f"{n} fwd+bwd", {"floor": floor(n), "ours": ours("gradient_shap", samples=n)})
    n = args.xrai_steps
    record(f"xrai ({n})", f"{2 * (n + 1)} fwd+bwd", {"floor": floor(2 * (n + 1)), "ours": ours("xrai", steps=n)})
    if only is not None and "xrai" not in only:
        return
    from cnn_exposed.attribution.xrai import felzenszwalb_segments

    start = time.perf_counter()
    for image in x:
        felzenszwalb_segments(image)
    print(
        f"    xrai: Felzenszwalb segments of {len(x)} images alone {time.perf_counter() - start:.2f}s (in 'ours', "
        "where they run in threads beside the gradient passes)"
    )


def mask_samplers(record, x, targets, args, floor, forward_pass, model) -> None:
    """RISE, Sobol, KernelSHAP and LIME against the bare forward passes of their masked copies (the first pass,
    for the targets and f(x), included). The superpixel methods' segmentation is timed apart: its share of the
    method's time is printed, and the floor is the passes alone."""
    n, k = len(x), args.masks
    slic = ce.segmentation.segment_images(x, "slic")
    segments = [int(s.max()) + 1 for s in slic]
    grid, designs = (int(v) for v in args.sobol.split(","))
    cases = [
        ("rise", f"rise ({k} masks)", {"samples": k}, k),
        (
            "sobol",
            f"sobol (grid {grid}, {designs} designs)",
            {"grid": grid, "designs": designs},
            designs * (grid**2 + 2),
        ),
        ("kernel_shap", f"kernel_shap ({k} coalitions)", {"samples": k, "segments": slic}, k + 1),
        ("lime", f"lime ({k} coalitions)", {"samples": k, "segments": slic}, k),
    ]
    for method, label, opts, per_image in cases:
        passes = -(-n * per_image // args.batch) + 1  # batches of masked copies, plus the first pass
        obj = ce.METHODS[method](model, batch_size=args.batch, progress=False, **opts)
        record(
            label,
            f"{passes} fwd",
            {"floor": floor(passes, forward_pass), "ours": lambda o=obj: o.explain(x, target=targets)},
        )
    for method in ("kernel_shap", "lime"):  # the default segmentations, alone
        if method not in (args.only or "kernel_shap,lime,masks"):
            continue
        start = time.perf_counter()
        seg = ce.METHODS[method](model).segmentation
        ce.segmentation.segment_images(x, seg)
        print(
            f"  segmentation ({seg}, {method}'s default): {time.perf_counter() - start:.2f}s for {n} images "
            f"(SLIC used above: {segments} superpixels)"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20, help="SmoothGrad samples")
    parser.add_argument("--steps", type=int, default=50, help="integrated-gradients steps")
    parser.add_argument("--channels", type=int, default=64, help="Score-CAM top-N channels")
    parser.add_argument("--blur-steps", type=int, default=100, help="Blur IG steps")
    parser.add_argument("--guided-steps", type=int, default=200, help="Guided IG steps")
    parser.add_argument("--shap-samples", type=int, default=50, help="GradientSHAP samples")
    parser.add_argument("--xrai-steps", type=int, default=100, help="XRAI's integrated-gradients steps per baseline")
    parser.add_argument("--masks", type=int, default=256, help="RISE masks and KernelSHAP/LIME coalitions")
    parser.add_argument("--sobol", default="8,32", help="Sobol grid,designs (default %(default)s: 2112 passes/image)")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    parser.add_argument(
        "--only",
        help="comma-separated subset of: saliency,gradient_x_input,smoothgrad,integrated_gradients,gradcam,"
        "gradcam++,layercam,lrp,guided_backprop,deconvnet,guided_gradcam,scorecam,eigencam,eigengradcam,hirescam,"
        "xgradcam,ablationcam,fem,occlusion,rise,sobol,kernel_shap,lime,auto (IG auto steps),blur_ig,guided_ig,"
        "gradient_shap,xrai,deeplift,deepshap; cams (the CAM family), paths (the four path methods), masks (the five "
        "mask samplers)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats, args.samples, args.steps, args.channels = 96, 2, 1, 4, 4, 8
        args.blur_steps, args.guided_steps, args.shap_samples, args.xrai_steps = 8, 8, 8, 4

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
    targets = np.arange(args.batch, dtype=np.int32)
    layer = "Conv_1"

    @tf.function(input_signature=[tf.TensorSpec((None,) + x.shape[1:]), tf.TensorSpec((None,), tf.int32)])
    def grad_pass(v, t):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = model(v, training=False)
            s = tf.gather(out, t, batch_dims=1)
        return tape.gradient(s, v)

    @tf.function(input_signature=[tf.TensorSpec((None,) + x.shape[1:]), tf.TensorSpec((None,), tf.int32)])
    def forward_pass(v, t):
        return tf.gather(model(v, training=False), t, batch_dims=1)

    def floor(passes: int, fn=grad_pass):
        def run():
            for _ in range(passes):
                fn(x, targets)

        return run

    def ours(method, **opts):
        obj = ce.METHODS[method](model, **{"batch_size": args.batch, "progress": False, **opts})
        return lambda: obj.explain(x, target=targets)

    rows = []  # (method, floor description, floor s, ours s, tf-keras-vis s or None)

    only = set(args.only.split(",")) if args.only else None
    if only is not None and "cams" in only:
        only |= {"gradcam", "gradcam++", "layercam", "scorecam", "guided_gradcam", *CAMS}
    if only is not None and "paths" in only:
        only |= {"blur_ig", "guided_ig", "gradient_shap", "xrai"}
    if only is not None and "masks" in only:
        only |= {"occlusion", "rise", "sobol", "kernel_shap", "lime"}

    def record(method, floor_desc, fns):
        if only is not None and method.split(" ")[0] not in only:
            return
        t, paired = best_of(fns, args.repeats)
        rows.append((method, floor_desc, t["floor"], t["ours"], t.get("tkv"), paired))
        r = rows[-1]
        tkv = f"{r[4]:8.2f}" if r[4] is not None else "       -"
        print(f"  {r[0]:22s} floor {r[2]:7.2f}s  ours {r[3]:7.2f}s  tf-keras-vis {tkv}s", flush=True)

    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    score = CategoricalScore(targets.tolist())
    tkv_sal = Saliency(model, model_modifier=ReplaceToLinear(), clone=True)
    tkv_cam = {
        "gradcam": Gradcam(model, model_modifier=ReplaceToLinear(), clone=True),
        "gradcam++": GradcamPlusPlus(model, model_modifier=ReplaceToLinear(), clone=True),
        "layercam": Layercam(model, model_modifier=ReplaceToLinear(), clone=True),
    }
    tkv_score = Scorecam(model, clone=True)

    print(f"MobileNetV2 (random weights) {args.size}x{args.size}, batch {args.batch}, best of {args.repeats}")
    record(
        "saliency",
        "1 fwd+bwd",
        {"floor": floor(1), "ours": ours("saliency"), "tkv": lambda: tkv_sal(score, x)},
    )
    record("gradient_x_input", "1 fwd+bwd", {"floor": floor(1), "ours": ours("gradient_x_input")})
    record(
        f"smoothgrad (n={args.samples})",
        f"{args.samples} fwd+bwd",
        {
            "floor": floor(args.samples),
            "ours": ours("smoothgrad", samples=args.samples, noise=0.2),
            "tkv": lambda: tkv_sal(score, x, smooth_samples=args.samples, smooth_noise=0.2),
        },
    )
    record(
        f"integrated_gradients ({args.steps})",
        f"{args.steps + 1} fwd+bwd",
        {"floor": floor(args.steps + 1), "ours": ours("integrated_gradients", steps=args.steps)},
    )
    for name, vis in tkv_cam.items():
        record(
            name,
            "1 fwd+bwd",
            {
                "floor": floor(1),
                "ours": ours(name, layer=layer),
                "tkv": lambda vis=vis: vis(score, x, penultimate_layer=layer),
            },
        )
    record("lrp (composite)", "1 fwd+bwd", {"floor": floor(1), "ours": ours("lrp")})
    record("lrp (epsilon)", "1 fwd+bwd", {"floor": floor(1), "ours": ours("lrp", rule="epsilon")})
    for name in ("guided_backprop", "deconvnet"):
        record(name, "1 fwd+bwd", {"floor": floor(1), "ours": ours(name)})
    record("guided_gradcam", "2 fwd+bwd", {"floor": floor(2), "ours": ours("guided_gradcam", layer=layer)})
    # DeepLIFT runs [x; x′] as one batch: its floor is one fwd+bwd per baseline of twice the rows ("paired"),
    # the inputs' rows alone carrying the backward pass; against 1 fwd+bwd of the images the ratio is about 2x
    paired_x = np.concatenate([x, np.zeros_like(x)])
    paired_t = np.concatenate([targets, targets])
    pairs = 2 * args.batch  # rows per call: the batch's images and their references
    record("deeplift", "1 fwd+bwd", {"floor": floor(1), "ours": ours("deeplift", batch_size=pairs)})
    record("deeplift (paired)", "1 fwd+bwd of [x; x′]", {"floor": lambda: grad_pass(paired_x, paired_t),
                                                          "ours": ours("deeplift", batch_size=pairs)})  # fmt: skip
    record("deepshap (4 rows)", "4 fwd+bwd of [x; x′]", {
        "floor": lambda: [grad_pass(paired_x, paired_t) for _ in range(4)],
        "ours": ours("deepshap", background=x[:1].repeat(4, axis=0) * 0.5, batch_size=pairs),
    })  # fmt: skip
    n = args.channels
    record(
        f"scorecam (top {n})",
        f"{n} fwd",
        {
            "floor": floor(n, forward_pass),
            "ours": ours("scorecam", layer=layer, channels=n),
            "tkv": lambda: tkv_score(score, x, penultimate_layer=layer, max_N=n),
        },
    )
    for name in ("hirescam", "xgradcam", "eigengradcam"):
        record(name, "1 fwd+bwd", {"floor": floor(1), "ours": ours(name, layer=layer)})
    for name in ("eigencam", "fem"):
        record(name, "1 fwd", {"floor": floor(1, forward_pass), "ours": ours(name, layer=layer)})
    record(
        f"ablationcam (top {n})",
        f"{n + 1} fwd",
        {"floor": floor(n + 1, forward_pass), "ours": ours("ablationcam", layer=layer, channels=n)},
    )
    occ = ce.Occlusion(model, batch_size=args.batch, progress=False)
    (ph, pw), (sy, sx) = occ._geometry(args.size, args.size)
    positions = len(range(0, args.size - ph + 1, sy)) + (0 if (args.size - ph) % sy == 0 else 1)
    record(
        "occlusion",
        f"{positions**2} fwd",
        {"floor": floor(positions**2, forward_pass), "ours": lambda: occ.explain(x, target=targets)},
    )

    path_methods(args, record, floor, ours, x, only)
    mask_samplers(record, x, targets, args, floor, forward_pass, model)

    if only is None or "auto" in only:
        auto_steps(args.repeats)

    print()
    print("| method | floor | floor s | ours s | ours / floor | paired median | tf-keras-vis s | tf-keras-vis / ours |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for method, desc, f, o, t, paired in rows:
        tk = f"{t:.2f} | {t / o:.1f}x" if t is not None else "- | -"
        print(f"| {method} | {desc} | {f:.2f} | {o:.2f} | {o / f:.2f} | {paired:.2f} | {tk} |")


if __name__ == "__main__":
    main()
