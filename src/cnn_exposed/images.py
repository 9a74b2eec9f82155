"""Reading image files for batch work: any format Pillow or OpenCV reads, any colour mode.

Awkward but valid files (grayscale, RGBA, palette, 16-bit, CMYK, huge, odd file names) are converted to
RGB uint8. Broken files (empty, truncated, not an image) raise :class:`ImageReadError` with the reason,
which batch code reports and skips.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageReadError
from .remote import RemotePath, as_path

IMAGE_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".ico", ".tga", ".sr", ".ras",
}  # fmt: skip


@dataclass
class ImageFile:
    """An image file found for batch work, with its true class index when the folder layout gives one."""

    path: Path | RemotePath  # a RemotePath for a URI (s3://, gs://, ...)
    label: int | None = None


def _to_rgb_uint8(arr: np.ndarray, bgr: bool) -> np.ndarray:
    """Any decoded array (gray, gray+alpha, RGB(A)/BGR(A), 8/16/32-bit or float) to (H, W, 3) uint8 RGB."""
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0
        elif hi > 255.0 or lo < 0.0:
            arr = (arr - lo) / ((hi - lo) or 1.0) * 255.0
        arr = np.nan_to_num(arr).clip(0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if channels == 1:
        return np.repeat(arr, 3, axis=-1)
    if channels == 2:  # gray + alpha: composite over white
        gray, alpha = arr[..., :1].astype(np.float32), arr[..., 1:].astype(np.float32) / 255.0
        return np.repeat((gray * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8), 3, axis=-1)
    if channels == 4:  # colour + alpha: composite over white
        rgb, alpha = arr[..., :3].astype(np.float32), arr[..., 3:].astype(np.float32) / 255.0
        arr = (rgb * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    arr = arr[..., :3]
    return np.ascontiguousarray(arr[..., ::-1] if bgr else arr)


def _read_with_pillow(path) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: huge images are valid here
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                    return _to_rgb_uint8(np.asarray(img, dtype=np.uint16), bgr=False)
                if mode in ("I", "F"):
                    return _to_rgb_uint8(np.asarray(img, dtype=np.float32), bgr=False)
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                    return _to_rgb_uint8(np.asarray(img.convert("RGBA")), bgr=False)
                return np.ascontiguousarray(np.asarray(img.convert("RGB")))
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _read_with_opencv(data: np.ndarray) -> np.ndarray:
    """The file's bytes decoded (read with np.fromfile: any file name works, unlike cv2.imread)."""
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError("OpenCV cannot decode it either")
    return _to_rgb_uint8(arr, bgr=True)


def read_image(path) -> np.ndarray:
    """Read one image file as ``(H, W, 3)`` uint8 RGB: a local path, or a URI (s3://, gs://: see
    :mod:`cnn_exposed.remote`).

    Raises
    ------
    ImageReadError
        With the reason: missing, empty, truncated, or not an image.
    """
    path = as_path(path)
    try:
        if not path.exists():
            raise ImageReadError("file not found")
        if path.is_dir():
            raise ImageReadError("is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        data = path.read_bytes() if isinstance(path, RemotePath) else None
    except OSError as err:  # a remote store that cannot be reached, or refuses
        raise ImageReadError(f"cannot be read ({err})") from None
    try:
        return _read_with_pillow(path if data is None else io.BytesIO(data))
    except Exception as pil_error:  # Pillow's errors are of many types; OpenCV gets a chance next
        reason = str(pil_error) or type(pil_error).__name__
        try:
            return _read_with_opencv(
                np.fromfile(str(path), dtype=np.uint8) if data is None else np.frombuffer(data, np.uint8)
            )
        except Exception:
            if "truncated" in reason.lower():
                raise ImageReadError(f"truncated or corrupt image ({reason})") from None
            if "cannot identify image file" in reason:
                reason = "not an image, or a format neither Pillow nor OpenCV reads"
            raise ImageReadError(reason) from None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3)`` to ``size = (height, width)``: area averaging to shrink, bilinear to grow."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrink = image.shape[0] > height or image.shape[1] > width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def deeper_image_folders(paths, limit: int = 3) -> list[Path]:
    """Up to ``limit`` folders below ``paths`` that hold image files but are deeper than :func:`collect_images`
    looks (a folder's own files and its sub-folders' files): what to suggest when it finds none."""
    found: list[Path] = []
    for p in (as_path(p) for p in paths):
        if isinstance(p, RemotePath) or not p.is_dir():  # (not walked on object stores: listing costs requests)
            continue
        for sub in sorted(c for c in p.iterdir() if c.is_dir()):
            # walked lazily, stopping at the limit: a catalogue's folder can hold millions of files
            for root, dirs, names in os.walk(sub):
                dirs.sort()  # the same suggestions on every file system
                folder = Path(root)
                if folder not in (p, sub) and folder.parent != p and folder not in found:
                    if any(Path(n).suffix.lower() in IMAGE_EXTENSIONS for n in names):
                        found.append(folder)
                        if len(found) >= limit:
                            return found
    return found


def no_images_message(paths) -> str:
    """What to tell a user whose ``paths`` hold no image :func:`collect_images` reads: where images are, if they are
    further down, and which folder to pass instead."""
    message = f"No image files found in {', '.join(map(str, paths))}."
    deeper = deeper_image_folders(paths)
    if deeper:
        message += (
            f" Images are read from a folder and its sub-folders (the classes), not further down; these hold images: "
            f"{', '.join(map(str, deeper))}. Pass such a folder, or its parent when its sub-folders are the classes "
            f"(e.g. {deeper[0].parent})."
        )
    return message


def collect_images(paths) -> tuple[list[ImageFile], list[str] | None]:
    """Expand files and folders into image files.

    A folder whose entries are only sub-folders is read with the Keras ``image_dataset_from_directory``
    convention: each sub-folder is a class (sorted names), which gives the images their true labels.
    Other folders contribute the files they hold (hidden files skipped). Files named explicitly are
    always taken, whatever their extension; in folders only files with an image extension are taken.

    Returns
    -------
    files : list of ImageFile
    class_names : list of str or None
        The class folders' names when every folder given follows the class-folder convention.
    """
    paths = [as_path(p) for p in paths]
    class_dirs = [
        p
        for p in paths
        if p.is_dir() and any(c.is_dir() for c in p.iterdir()) and not any(c.is_file() for c in p.iterdir())
    ]
    class_names = None
    if class_dirs and len(class_dirs) == len(paths):
        class_names = sorted({c.name for p in class_dirs for c in p.iterdir() if c.is_dir()})
    files: list[ImageFile] = []
    for p in paths:
        if p in class_dirs and class_names is not None:
            for sub in sorted(c for c in p.iterdir() if c.is_dir()):
                label = class_names.index(sub.name)
                files += [ImageFile(f, label) for f in _images_in(sub) if f.suffix.lower() in IMAGE_EXTENSIONS]
        elif p.is_dir():
            for f in _images_in(p):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(ImageFile(f))
            for sub in sorted(c for c in p.iterdir() if c.is_dir()):
                files += [ImageFile(f) for f in _images_in(sub) if f.suffix.lower() in IMAGE_EXTENSIONS]
        else:
            files.append(ImageFile(p))  # named explicitly: read it, and report it if it is not an image
    return files, class_names


def match_folder_classes(files: list, folder_classes, class_names) -> str | None:
    """Renumber the labels that class sub-folders gave ``files`` (Keras' sorted-folder order) in the order of the
    model's ``class_names``, when every folder is named after one of them. When they cannot be matched: with as
    many folders as classes the sorted order stands (Keras' convention, as ``image_dataset_from_directory``
    trained the model); otherwise the labels are dropped. Returns a note saying so, or None."""
    if folder_classes is None or class_names is None:
        return None
    names = [str(c) for c in class_names]
    if all(c in names for c in folder_classes):
        remap = {i: names.index(c) for i, c in enumerate(folder_classes)}
        for f in files:
            if f.label is not None:
                f.label = remap[f.label]
        return None
    if len(folder_classes) == len(names):
        return None
    for f in files:
        f.label = None
    return f"folder classes {list(folder_classes)} do not match the model's classes {names}; labels ignored"
