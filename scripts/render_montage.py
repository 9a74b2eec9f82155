"""Render every attribution method on the same demo images into one montage PNG (a visual regression check).

    python scripts/render_montage.py [--out images/montage.png]

Rows: the bundled trap pools (pools with metal rails) and one clean image of each class; columns: the
image, then one overlay per method, with the rail mask outlined in white on the trap images. Compare the
PNG with the committed one after a change: a method whose picture changed has changed behaviour. Also
prints, per method, the pointing-game rate on the rails of the trap pools called bathroom, the deletion
AUC and whether the method passes the randomisation check (the figures quoted in the README).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cnn_exposed as ce  # noqa: E402
from cnn_exposed import metrics  # noqa: E402

METHODS = [
    "saliency", "gradient_x_input", "smoothgrad", "integrated_gradients", "blur_ig", "guided_ig", "gradient_shap",
    "xrai", "gradcam", "gradcam++", "layercam", "scorecam", "eigencam", "hirescam", "xgradcam", "ablationcam", "fem",
    "occlusion", "rise", "sobol", "kernel_shap", "lime", "lrp", "guided_backprop", "guided_gradcam", "deeplift",
    "deepshap",
]  # fmt: skip
TABLE = METHODS[:4] + METHODS[8:12] + ["occlusion", "lrp", "guided_backprop", "guided_gradcam"]  # the README's table
# LIME explains the probability by default (as the lime package): the demo's are saturated (1.00), so its logit
OPTIONS = {"lime": {"score": "logit"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="images/montage.png")
    parser.add_argument("--table", action="store_true", help="also compute the metrics table (slower)")
    args = parser.parse_args(argv)
    demo = ce.load_model("demo")
    trap, _, trap_masks = ce.demo.load_images("trap")
    clean, clean_labels, _ = ce.demo.load_images("clean")
    picks = [int(np.flatnonzero(clean_labels == c)[0]) for c in range(len(demo.class_names))]
    images = np.concatenate([trap[:4], clean[picks]])
    rails = np.concatenate([trap_masks["rail"][:4], np.zeros((len(picks),) + trap.shape[1:3], bool)])
    exps = {
        m: ce.explain(demo.model, images, m, preprocess=demo.preprocess, progress=False, **OPTIONS.get(m, {}))
        for m in METHODS
    }
    rows, cols = len(images), len(METHODS) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.45 * rows + 0.4))
    first = exps["gradcam"]
    for r in range(rows):
        pred = int(first.predictions[r])
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_title(f"{demo.class_names[pred]} {first.probabilities[r, pred]:.2f}", fontsize=7)
        for c, m in enumerate(METHODS, start=1):
            axes[r, c].imshow(ce.draw_map(exps[m], r))  # signed methods: red for, blue against the class
            if rails[r].any():
                axes[r, c].contour(rails[r], levels=[0.5], colors="lime", linewidths=0.5)
            if r == 0:
                axes[r, c].set_title(m, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(
        "cnn-exposed demo: every method on trap pools (rails outlined) and clean images; signed methods (gradient x "
        "input, the path methods, KernelSHAP, LIME, LRP, DeepLIFT, DeepSHAP) red for the class, blue against",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"montage: {args.out}")
    if args.table:
        all_trap = ce.explain(demo.model, trap, "gradcam", preprocess=demo.preprocess, progress=False)
        wrong = all_trap.predictions == demo.class_names.index("bathroom")
        rows = metrics.compare_methods(
            demo.model, trap[wrong], TABLE, masks=trap_masks["rail"][wrong], preprocess=demo.preprocess, sanity=True
        )
        print(metrics.format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
