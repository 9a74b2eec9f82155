"""The ``cnn-exposed`` command line: explain folders of images with a model and write an HTML report."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
import warnings
from pathlib import Path

from .errors import InputError, UsageError

DEFAULT_METHODS = "gradcam,integrated_gradients,smoothgrad,occlusion"
DEMO_METHODS = "gradcam,layercam,integrated_gradients,smoothgrad,occlusion"
AUDIT_CHECKPOINT = ".checkpoint"  # in OUT: the audit's records while it runs (resumed after an interruption)

DESCRIPTION = """\
Show why a Keras image classifier decides what it decides.

  cnn-exposed demo                      the offline pool/bathroom story, end to end
  cnn-exposed explain MODEL IMAGES...   heatmaps for your model and your images
  cnn-exposed audit MODEL FOLDER        the candidate shortcuts in a labelled folder, with causal proof
  cnn-exposed layers MODEL              the layers you can name with --layer

Every run writes OUT/index.html (open it in a browser, no server needed), one PNG per image and
method, and OUT/summary.json + OUT/summary.csv with predictions, scores and heatmap peaks.
"""

EXPLAIN_EPILOG = """\
MODEL is 'demo' (or its negative control 'demo-fair'), a keras.applications name (mobilenet_v2, resnet50,
efficientnet_b0, vgg16, ...; ImageNet weights are downloaded as Keras normally does), a .keras / .h5 file,
or a TensorFlow SavedModel directory (the one holding saved_model.pb). A SavedModel keeps no layers: the
methods that need them (CAMs, LRP, guided backprop, deconvnet, guided Grad-CAM) refuse it, and without
--method it is explained with {layer_free}.

IMAGES are image files and folders. A folder whose entries are only sub-folders is read like Keras'
image_dataset_from_directory: each sub-folder is a class, which gives every image its true label; the
report then groups the mistakes by confusion pair (true -> predicted), with each pair's mean heatmap,
which is how a shortcut such as "metal rails mean bathroom" shows up. Any format Pillow or OpenCV reads
is accepted (grayscale, RGBA, palette, 16-bit, CMYK, huge); broken files are listed with the reason
and skipped, and everything else is still written.

methods: {methods}

examples:
  cnn-exposed explain model.keras photos/ --class-names classes.txt
  cnn-exposed explain model.keras data/val/ --method gradcam,integrated_gradients --target true
  cnn-exposed explain mobilenet_v2 cat.jpg dog.png --method gradcam --layer Conv_1 --out report/
  cnn-exposed explain exported_model/ photos/ --method saliency,occlusion --model-output dense_1
"""


def _method_list() -> str:
    """The registry's method names (``cnn_exposed.METHODS``), wrapped for the help text."""
    from .attribution import METHODS

    return "\n         ".join(textwrap.wrap(", ".join(METHODS), 90))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnn-exposed", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the bundled pool/bathroom demo and write its report",
        description="Run the bundled demo model (a small CNN that learned 'metal rails mean bathroom') "
        "over the bundled clean and trap images and write the report.",
    )
    demo.add_argument("--out", default="cnn-exposed-report", help="output folder (default: %(default)s)")
    demo.add_argument("--method", default=DEMO_METHODS, help="comma-separated methods (default: %(default)s)")

    ex = sub.add_parser(
        "explain",
        help="explain images with a model",
        description="Explain a model's decisions on image files and folders.",
        epilog=EXPLAIN_EPILOG.format(methods=_method_list(), layer_free=_saved_model_methods(DEFAULT_METHODS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("model", help=MODEL_HELP)
    ex.add_argument("images", nargs="+", help="image files and/or folders")
    ex.add_argument("--method", help=f"comma-separated methods (default: {DEFAULT_METHODS})")
    ex.add_argument("--layer", help="CAM layer, a name or an 'outer/inner' path (default: last spatial layer)")
    ex.add_argument(
        "--target",
        default="predicted",
        help="class to explain: 'predicted' (default), 'true' (the folder label), a class index, or a name",
    )
    ex.add_argument("--class-names", help="text file with one class name per line, or the training folder")
    ex.add_argument(
        "--preprocess",
        help="for your own model: scale_0_1 (default), scale_-1_1, none, or a keras.applications name",
    )
    ex.add_argument("--batch-size", type=int, default=16, help="images per batch (default: %(default)s)")
    ex.add_argument("--out", default="cnn-exposed-report", help="output folder (default: %(default)s)")
    ex.add_argument("--score", choices=["logit", "probability"], default="logit", help="what is explained")
    _ray_argument(ex)
    _saved_model_arguments(ex)

    _audit_parser(sub)

    ev = sub.add_parser(
        "evaluate",
        help="which explanation to trust: methods scored by faithfulness and sanity metrics, with a recommendation",
        description="Explain the images with each method, score every explanation by each metric (means with "
        "bootstrap intervals over the images, ranks), run the randomisation check, and recommend the most "
        "faithful method that passes it. Writes OUT/evaluation.html, OUT/evaluation.png and OUT/evaluation.json.",
    )
    ev.add_argument("model", help=MODEL_HELP)
    ev.add_argument("images", nargs="+", help="image files and/or folders")
    ev.add_argument("--method", help="comma-separated methods (default: ce.evaluate's six, from Grad-CAM to LRP)")
    ev.add_argument("--metrics", help="comma-separated metrics (default: ce.evaluate's: faithfulness, complexity and "
                    "random logit; see cnn_exposed.evaluation.METRICS)")  # fmt: skip
    ev.add_argument("--limit", type=int, help="evaluate on the first N images only")
    ev.add_argument("--class-names", help="text file with one class name per line, or the training folder")
    ev.add_argument("--preprocess", help="for your own model: scale_0_1 (default), scale_-1_1, none, or a name")
    ev.add_argument("--batch-size", type=int, default=16, help="images per batch (default: %(default)s)")
    ev.add_argument("--out", default="cnn-exposed-evaluation", help="output folder (default: %(default)s)")
    _saved_model_arguments(ev)

    layers = sub.add_parser("layers", help="list a model's layers (paths usable with --layer)")
    layers.add_argument("model")
    layers.add_argument("--all", action="store_true", help="all layers, not only those with a spatial output")
    return parser


MODEL_HELP = "'demo', 'demo-fair', a keras.applications name, a .keras/.h5 file, or a SavedModel directory"


def _audit_parser(sub) -> None:
    """The ``audit`` command's arguments."""
    au = sub.add_parser(
        "audit",
        help="find the shortcut: what the model attends to in its mistakes, with causal proof",
        description="Group the images of a labelled folder by true and predicted class, cluster each group by "
        "what the model attends to, and test every cluster by blurring the attended regions (against a region "
        "of the same size elsewhere). Writes OUT/index.html (candidate shortcuts first) and OUT/audit.json.",
    )
    au.add_argument("model", help=MODEL_HELP)
    au.add_argument("folder", help="a folder of class sub-folders (the sub-folder names are the true labels)")
    au.add_argument("--method", default="gradcam", help="the attribution method (default: %(default)s)")
    au.add_argument("--class-names", help="text file with one class name per line, or the training folder")
    au.add_argument("--preprocess", help="for your own model: scale_0_1 (default), scale_-1_1, none, or a name")
    au.add_argument("--batch-size", type=int, default=16, help="images per batch (default: %(default)s)")
    au.add_argument("--out", default="cnn-exposed-audit", help="output folder (default: %(default)s)")
    _ray_argument(au)
    au.add_argument(
        "--fresh", action="store_true",
        help=f"start over: discard the records an interrupted run left in OUT/{AUDIT_CHECKPOINT} (without it, a run "
        "resumes from them)",
    )  # fmt: skip
    _saved_model_arguments(au)


def _ray_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help="explain the images on a Ray cluster (pip install 'cnn-exposed[ray]'): ADDRESS to join one (e.g. auto, "
        "ray://head:10001), none to start one on this machine; the workers must reach the files",
    )  # fmt: skip


def _saved_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say how to read a SavedModel directory (see cnn_exposed.savedmodel)."""
    from .savedmodel import HEADS

    group = parser.add_argument_group("SavedModel directories")
    group.add_argument("--endpoint", default="serving_default", help="signature or function to call (%(default)s)")
    group.add_argument("--model-output", help="the output to explain when the signature returns several (its key)")
    group.add_argument(
        "--head",
        choices=HEADS,
        default="auto",
        help="whether the output is softmax or sigmoid probabilities or logits (default: decided on a probe batch)",
    )
    group.add_argument("--input-size", help="HxW (e.g. 224x224) when the signature leaves the image size open")


def _saved_model_methods(text: str) -> str:
    """The methods of ``text`` (comma-separated) that work on a SavedModel."""
    from .savedmodel import LAYER_FREE_METHODS

    return ",".join(m for m in text.split(",") if m in LAYER_FREE_METHODS)


def _saved_model_defaults(args, loaded, echo=print) -> None:
    """On a SavedModel: without --method, the default methods that work on it; on probabilities, the
    probability is what can be explained (its logits are out of reach)."""
    if args.method is None:
        args.method = _saved_model_methods(DEFAULT_METHODS)
        echo(f"note: {args.model} is a SavedModel (its layers cannot be reached): explaining with {args.method}")
    head = loaded.metadata.get("head")
    if head in ("softmax", "sigmoid") and args.score == "logit":
        args.score = "probability"
        echo(
            f"note: {args.model} outputs {head} probabilities (--head {head}); their logits are out of reach, "
            "so the probability is explained (--score probability)"
        )


def _parse_size(text: str | None) -> tuple[int, int] | None:
    """``"224x224"`` -> (224, 224); None stays None."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--input-size {text!r}: give HEIGHTxWIDTH, e.g. 224x224")
    return int(parts[0]), int(parts[1])


def _parse_methods(text: str) -> list[str]:
    from .attribution import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none)'}; valid: {', '.join(METHODS)}")
    return methods


def _parse_target(text: str, class_names: list) -> int | str:
    if text in ("predicted", "true"):
        return text
    if text.lstrip("-").isdigit():
        return int(text)
    if text in class_names:
        return class_names.index(text)
    shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
    raise UsageError(f"unknown target {text!r}: use 'predicted', 'true', a class index or one of: {shown}")


def _labelled_files(loaded, sources: list, echo=print) -> list:
    """The image files under ``sources``, each with its true class in the model's numbering when the
    folders give one (class sub-folders, matched by name, else in Keras' sorted-folder order)."""
    from .images import collect_images, match_folder_classes, no_images_message

    files, folder_classes = collect_images(sources)
    if not files:
        raise UsageError(no_images_message(sources))
    note = match_folder_classes(files, folder_classes, list(loaded.class_names))
    if note:
        echo(f"note: {note}")
    return files


def _ray_engine(address: str | None):
    """``--ray [ADDRESS]``: None without the flag; a local cluster with it alone."""
    if address is None:
        return None
    from .distributed import RayEngine

    return RayEngine(address=address or None)


def run_audit(
    loaded, folder, *, method="gradcam", batch_size=16, out="cnn-exposed-audit", echo=print, progress=False,
    fresh: bool = False, engine=None,
):  # fmt: skip
    """Audit the model on a folder of class sub-folders: the candidate shortcuts, ``out/index.html`` and
    ``out/audit.json``. Broken files are reported and skipped. The explaining pass keeps its records in
    ``out/.checkpoint`` as it goes: a run that was interrupted resumes from them (``fresh``: discards them first);
    they are deleted once the report is written. Returns the :class:`~cnn_exposed.Audit`."""
    import shutil

    import numpy as np

    from .audit import audit

    checkpoint = Path(out) / AUDIT_CHECKPOINT
    if fresh:
        shutil.rmtree(checkpoint, ignore_errors=True)
    files = _labelled_files(loaded, [folder], echo)
    if any(f.label is None for f in files):
        raise UsageError(f"{folder}: the audit needs true labels: give a folder whose sub-folders are the classes")
    try:  # the files are streamed: read a batch at a time, never all at once
        result = audit(
            loaded.model, [f.path for f in files], np.asarray([f.label for f in files]), preprocess=loaded.preprocess,
            class_names=list(loaded.class_names), method=method, batch_size=batch_size, progress=progress,
            checkpoint=checkpoint, engine=engine,
        )  # fmt: skip
    except InputError as err:
        hint = " (or pass --fresh)" if str(checkpoint) in str(err) else ""
        raise UsageError(f"{folder}: {err}{hint}") from None
    if result.resumed:
        echo(f"resumed an interrupted run: {result.resumed} of {len(files)} image(s) read back from {checkpoint}")
    for path, reason in result.skipped:
        echo(f"skipped {path}: {reason}")
    result.to_html(out)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def run_explain(
    loaded, sources: list, methods: list, *, layer=None, target="predicted", batch_size=16, out="report",
    score="logit", echo=print, title=None, engine=None,
):  # fmt: skip
    """Explain every image under ``sources`` (on a Ray cluster with ``engine``); returns the
    :class:`~cnn_exposed.report.Report`. Unreadable files are reported and skipped."""
    import warnings

    import numpy as np
    from tqdm.auto import tqdm

    from .attribution import make_method, method_class
    from .attribution.batches import explain_many
    from .errors import CnnExposedError
    from .report import Report

    files = _labelled_files(loaded, sources, echo)
    if target == "true" and any(f.label is None for f in files):
        raise UsageError("--target true needs true labels: give folders of class sub-folders")
    recipes = {}
    for m in methods:
        options = {"preprocess": loaded.preprocess, "batch_size": batch_size, "progress": False, "score": score}
        if method_class(m).uses_layer and layer:
            options["layer"] = layer
        recipes[m] = (m, options)
    try:
        built = [make_method(loaded.model, m, **options) for m, options in recipes.values()]
    except CnnExposedError as err:
        raise UsageError(str(err)) from None
    layer_path = next((e.engine.layer.path for e in built if e.engine.layer is not None), None)
    settings = {
        "model": title or loaded.name, "methods": ", ".join(methods), "layer (CAM methods)": layer_path or "-",
        "target": target, "score": score, "batch size": batch_size, "input size": "x".join(map(str, loaded.input_size)),
        "images": len(files), "sources": ", ".join(map(str, sources)), "date": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    report = Report(Path(out), list(loaded.class_names), methods, settings)
    labels = [f.label for f in files]
    wanted = np.asarray(labels) if target == "true" else target
    bar = tqdm(total=len(files), desc="explaining", unit="img", disable=len(files) < 2)
    batches = explain_many(loaded.model, recipes, [f.path for f in files], wanted, engine)
    try:
        with warnings.catch_warnings():  # unreadable files are listed below, once each
            warnings.filterwarnings("ignore", "Skipped unreadable", UserWarning)
            for exps in batches:
                first = exps[methods[0]]
                for path, reason in first.skipped:
                    report.add_problem(path, reason)
                    echo(f"skipped {path}: {reason}")
                for i, position in enumerate(first.image_index):
                    entries = {m: (e.maps[i], e.targets[i], e.scores[i]) for m, e in exps.items()}
                    report.add(str(first.files[i]), first.images[i], first.probabilities[i], labels[position], entries)
                bar.update(len(first) + len(first.skipped))
    except CnnExposedError as err:
        raise UsageError(str(err)) from None
    bar.close()
    report.write()
    return report


def _demo(args, echo=print) -> int:
    import numpy as np

    from . import demo
    from .attribution import explain
    from .audit import audit
    from .bundled import data_dir
    from .metrics import pointing_game
    from .models import load_model

    loaded = load_model("demo")
    root = data_dir() / "demo" / "images"
    methods = _parse_methods(args.method)
    echo("demo: a small CNN trained on generated hotel scenes where metal rails appeared only in bathrooms")
    run_explain(loaded, [root / "clean", root / "trap"], methods, out=args.out, batch_size=32, echo=echo, title="demo")
    # The finding, on the bundled trap pools (pools that have metal rails) and their rail masks.
    images, trap_labels, masks = demo.load_images("trap")
    exp = explain(loaded.model, images, "gradcam", preprocess=loaded.preprocess, progress=False)
    bathroom = np.asarray(exp.predictions == loaded.class_names.index("bathroom"))
    hits = pointing_game(exp.maps[bathroom], masks["rail"][bathroom])
    echo(
        f"finding: {int(bathroom.sum())} of {len(images)} trap pools (pools with metal rails) were called "
        f"bathroom; Grad-CAM's peak falls on the rails in {int(hits.sum())} of those {int(bathroom.sum())}."
    )
    # The audit finds the cue without the masks: what the mistakes attend to, and whether hiding it undoes them.
    # On a larger set of freshly generated scenes (the 20 bundled images are too few for significance).
    clean, clean_labels, clean_masks = demo.generate(90, "clean", seed=5)
    trap, trap_labels, trap_masks = demo.generate(30, "trap", seed=5)
    scenes, labels = np.concatenate([clean, trap]), np.concatenate([clean_labels, trap_labels])
    rails = np.concatenate([clean_masks["rail"], trap_masks["rail"]])

    def on_rails(cand) -> int:
        return sum(bool(rails[i][y0:y1, x0:x1].any()) for i, (y0, x0, y1, x1) in zip(cand.indices, cand.boxes))

    found = audit(
        loaded.model, scenes, labels, preprocess=loaded.preprocess, class_names=list(loaded.class_names),
        progress=False,
    )  # fmt: skip
    found.to_html(Path(args.out) / "audit")
    echo(f"audit of {len(scenes)} generated scenes ({len(trap)} trap pools): " + found.summary(1)[0])
    if found.candidates:
        top = found.candidates[0]
        echo(f"  (the masks say: a rail is in the attended region of {on_rails(top)} of its {len(top.indices)})")
    fair = load_model("demo-fair")  # the negative control: trained with rails in every class
    quiet = audit(
        fair.model, scenes, labels, preprocess=fair.preprocess, class_names=list(fair.class_names), progress=False
    )
    flagged = [c for c in quiet.candidates if c.significant and c.effect >= 0.3 and 2 * on_rails(c) >= len(c.indices)]
    echo(
        f"negative control (demo-fair, trained with rails in every class): {len(flagged)} significant candidate(s) "
        "on the rails" + ("." if flagged else ", as it should be.")
    )
    echo(f"report: {(Path(args.out) / 'index.html').resolve()} (audit: {Path(args.out) / 'audit' / 'index.html'})")
    return 0


def _evaluate(args, loaded, echo=print) -> int:
    """``cnn-exposed evaluate``: the evaluation of the chosen methods on the files, written to ``args.out``."""
    from .evaluation import DEFAULT_METHODS, evaluate

    methods = _parse_methods(args.method) if args.method else list(DEFAULT_METHODS)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    files = _labelled_files(loaded, args.images, echo)[: args.limit]
    try:
        with warnings.catch_warnings():  # the unreadable files are listed below, once
            warnings.filterwarnings("ignore", message="Skipped unreadable file", category=UserWarning)
            result = evaluate(
                loaded, [f.path for f in files], methods, metrics, batch_size=args.batch_size,
                progress=sys.stderr.isatty(),
            )  # fmt: skip
    except ValueError as err:  # an unknown metric or method: the message lists the valid ones
        raise UsageError(str(err)) from None
    for path, reason in result.skipped:
        echo(f"skipped {path}: {reason}")
    page = result.to_html(args.out)
    echo(result.recommend().text)
    echo(f"report: {page.resolve()}")
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            return _demo(args)
        from .models import load_model

        if args.command == "layers":
            from .layers import list_layers

            loaded = load_model(args.model)
            for path in list_layers(loaded.model, spatial_only=not args.all):
                print(path)
            return 0
        loaded = load_model(
            args.model, preprocess=args.preprocess, class_names=args.class_names, endpoint=args.endpoint,
            output=args.model_output, head=args.head, input_size=_parse_size(args.input_size),
        )  # fmt: skip
        saved_model = "saved_model" in loaded.metadata
        if args.command == "audit":
            _parse_methods(args.method)
            if saved_model:
                from .savedmodel import require_layer_access

                require_layer_access(loaded.model, "The audit (its clusters are of a convolutional layer's features)")
            result = run_audit(
                loaded,
                args.folder,
                method=args.method,
                batch_size=args.batch_size,
                out=args.out,
                progress=sys.stderr.isatty(),
                fresh=args.fresh,
                engine=_ray_engine(args.ray),
            )
            for line in result.summary(3):
                print(line)
            print(
                f"audited {len(result.labels)} image(s)"
                + (f", skipped {len(result.skipped)}" if result.skipped else "")
                + "."
            )
            print(f"report: {(Path(args.out) / 'index.html').resolve()}")
            return 0
        if args.command == "evaluate":
            return _evaluate(args, loaded)
        if saved_model:
            _saved_model_defaults(args, loaded)
        methods = _parse_methods(args.method or DEFAULT_METHODS)
        target = _parse_target(args.target, list(loaded.class_names))
        with warnings.catch_warnings():  # a SavedModel's probabilities: said in the note above
            warnings.filterwarnings("ignore", message=".*SavedModelHead.*")
            report = run_explain(
                loaded, args.images, methods, layer=args.layer, target=target, batch_size=args.batch_size,
                out=args.out, score=args.score, engine=_ray_engine(args.ray),
            )  # fmt: skip
        n, skipped = len(report.records), len(report.problems)
        pairs = report.confusion_pairs()
        if pairs:
            t, p, c = pairs[0]
            print(f"most common mistake: {report.name(t)} -> {report.name(p)} ({c} image(s))")
        print(f"explained {n} image(s)" + (f", skipped {skipped}" if skipped else "") + ".")
        print(f"report: {(Path(args.out) / 'index.html').resolve()}")
        return 0 if n else 1
    except UsageError as err:
        print(f"cnn-exposed: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # our own errors carry the fix; show them without a traceback
        from .errors import CnnExposedError

        if isinstance(err, CnnExposedError):
            print("cnn-exposed: error: " + "\n  ".join(textwrap.wrap(str(err), 100)), file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
