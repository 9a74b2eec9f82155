"""The ``cnn-exposed`` console script.

An application may set up its process; the library does not. This module is outside the ``cnn_exposed``
package so that it runs before anything imports TensorFlow, whose C++ start-up messages ("oneDNN custom
operations are on", "Could not find cuda drivers") would otherwise open every command. ``TF_CPP_MIN_LOG_LEVEL``
silences them on older releases only: since TensorFlow moved to Abseil logging, what it writes while it loads
comes "before absl::InitializeLog()" and ignores the variable, so the import runs with the process's standard
error pointed at ``/dev/null`` (a failing import still raises, with its message, once stderr is back).
"""

from __future__ import annotations

import os


def _import_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None) -> int:
    _import_tensorflow_quietly()
    from cnn_exposed.cli import main as run

    return run(argv)
