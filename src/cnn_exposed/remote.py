"""Image files on any filesystem pyarrow reads: ``s3://bucket/photos``, ``gs://bucket/photos``, ``hdfs://...``,
``file:///data/photos``.

A URI given where files or folders are taken (:func:`cnn_exposed.explain`, :func:`cnn_exposed.audit`, the
command line) becomes a :class:`RemotePath`, which offers the little of :class:`pathlib.Path` that finding and
reading images needs (``is_dir``, ``iterdir``, ``name``, ``suffix``, ``read_bytes``...), so that folders of class
sub-folders, broken files and everything else behave as they do on a local disk. The filesystem is made from the
URI by ``pyarrow.fs.FileSystem.from_uri`` (credentials as pyarrow finds them: for S3 the usual AWS environment
variables or instance role, for GCS the application default credentials), once per process and bucket, so a
:class:`RemotePath` sent to a Ray worker opens its own connection there. pyarrow is an optional dependency
(``pip install "cnn-exposed[ray]"``; Colab has it), imported only when a URI is read.
"""

from __future__ import annotations

import posixpath
import re
from types import SimpleNamespace

from .errors import InputError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FILESYSTEMS: dict = {}  # "scheme://authority" -> (pyarrow filesystem, whether its paths start with the authority)


def is_uri(path) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path."""
    return isinstance(path, (str, RemotePath)) and bool(_URI.match(str(path)))


def as_path(path):
    """A :class:`RemotePath` for a URI, a :class:`pathlib.Path` for anything else."""
    from pathlib import Path

    if isinstance(path, RemotePath):
        return path
    return RemotePath(str(path)) if is_uri(path) else Path(path)


def _filesystem(uri: str) -> tuple:
    """The pyarrow filesystem of ``uri``'s scheme and authority, and ``uri``'s path in it."""
    key, rest = _split(uri)
    if key not in _FILESYSTEMS:
        try:
            from pyarrow import fs
        except ImportError:
            raise InputError(
                f'Reading {uri} needs pyarrow: pip install "cnn-exposed[ray]" (or pip install pyarrow), then try again.'
            ) from None
        try:
            filesystem, path = fs.FileSystem.from_uri(uri)
        except Exception as err:  # noqa: BLE001 (pyarrow raises several kinds for a bad URI or missing credentials)
            raise InputError(f"Cannot open {uri}: {err}") from None
        # object stores name a file "bucket/key" (the authority is part of the path); HDFS names it "/key"
        _FILESYSTEMS[key] = (filesystem, path == rest or path == rest.rstrip("/"))
    filesystem, with_authority = _FILESYSTEMS[key]
    return filesystem, _path_in(key, rest, with_authority)


def _split(uri: str) -> tuple[str, str]:
    """``("scheme://authority", "authority/the/path")`` of a URI (``file:///x``: ``("file://", "/x")``)."""
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}", rest


def _path_in(key: str, rest: str, with_authority: bool) -> str:
    return rest if with_authority else "/" + (rest.split("/", 1)[1] if "/" in rest else "")


def _child_uri(key: str, path: str, with_authority: bool) -> str:
    return key.split("://")[0] + "://" + path if with_authority else key + path


class RemotePath:
    """A file or folder at a URI, with the part of :class:`pathlib.Path`'s interface the image readers use."""

    def __init__(self, uri: str, info=None):
        self.uri = uri.rstrip("/") if not uri.endswith("://") else uri
        self._info = info

    def __getstate__(self) -> dict:  # what travels to a worker: the URI (it opens its own filesystem)
        return {"uri": self.uri, "_info": None}

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"RemotePath({self.uri!r})"

    def __fspath__(self) -> str:
        return self.uri

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    @property
    def name(self) -> str:
        return posixpath.basename(_split(self.uri)[1])

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    def _get(self):
        if self._info is None:
            filesystem, path = _filesystem(self.uri)
            self._info = filesystem.get_file_info(path)
        return self._info

    def exists(self) -> bool:
        return self._get().type.name != "NotFound"

    def is_dir(self) -> bool:
        return self._get().type.name == "Directory"

    def is_file(self) -> bool:
        return self._get().type.name == "File"

    def stat(self) -> SimpleNamespace:
        return SimpleNamespace(st_size=self._get().size or 0)

    def iterdir(self):
        from pyarrow import fs

        filesystem, path = _filesystem(self.uri)
        key = _split(self.uri)[0]
        with_authority = _FILESYSTEMS[key][1]
        for info in filesystem.get_file_info(fs.FileSelector(path, recursive=False)):
            yield RemotePath(_child_uri(key, info.path, with_authority), info)

    def read_bytes(self) -> bytes:
        filesystem, path = _filesystem(self.uri)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
