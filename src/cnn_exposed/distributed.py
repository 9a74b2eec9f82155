"""Run a pass over many images on a Ray cluster: one worker process per CPU (or GPU), each building its model and
compiled passes once, fed batches.

:class:`RayEngine` is generic: it maps a *job* (a picklable object with ``setup()``, called once in each worker,
and ``__call__(item)``, called per batch) over items and yields the results as they finish, with a bounded
number in flight so the driver's memory does not grow with the catalogue. A worker that dies is restarted by
Ray and its unfinished batches run again (``max_restarts`` / ``max_task_retries``), so every batch's result
arrives once. Ray is an optional dependency (``pip install "cnn-exposed[ray]"``), imported only here, when a
``RayEngine`` starts.

TensorFlow in the workers: each worker process starts with ``TF_FORCE_GPU_ALLOW_GROWTH`` set (a worker takes
the GPU memory it needs, not all of it), ``CUDA_VISIBLE_DEVICES`` empty when it has no GPU (a CPU worker never
touches one), its thread pools sized to the CPUs it reserved (``TF_NUM_INTRAOP_THREADS``: TensorFlow would
otherwise start one thread per core of the machine in every worker, and the workers of a node would contend),
and TensorFlow's C++ logs quieted. A batch is padded to the full batch size (its last image repeated, the extra
results dropped), so that a worker's compiled passes see one shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np

from .errors import InputError


class RayEngine:
    """Where and how wide a pass runs on Ray.

    Parameters
    ----------
    address : str or None
        The cluster to join (``"auto"``, ``"ray://head:10001"``, ...); None starts a local one on this machine, or
        joins the one this process is already connected to.
    workers : int or None
        Worker processes; None: as many as the cluster's CPUs (or GPUs, with ``gpus_per_worker``) allow.
    cpus_per_worker, gpus_per_worker : float
        What each worker reserves. ``gpus_per_worker`` None (the default): one GPU per worker when the cluster has
        GPUs, none otherwise.
    in_flight : int
        Batches queued per worker: enough to keep each busy, few enough to bound the driver's memory.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, in_flight: int = 2):  # fmt: skip
        _ray()  # without Ray installed: say how to install it, now rather than at the first batch
        self.address, self.requested = address, workers
        self.cpus_per_worker, self.gpus_per_worker, self.in_flight = cpus_per_worker, gpus_per_worker, in_flight
        self.workers: list = []  # the live workers' actor handles, while a pass runs
        self._job: list = []

    def _start(self, job) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        if self.gpus_per_worker is None:  # one GPU each on a GPU cluster, CPU workers elsewhere
            self.gpus_per_worker = 1 if resources.get("GPU", 0) >= 1 else 0
        if self.requested:
            n = int(self.requested)
        elif self.gpus_per_worker:
            n = int(resources.get("GPU", 0) // self.gpus_per_worker)
        else:
            n = int(resources.get("CPU", 1) // max(self.cpus_per_worker, 1e-9))
        if n < 1:
            raise InputError(
                f"The Ray cluster has {resources.get('CPU', 0):g} CPU(s) and {resources.get('GPU', 0):g} GPU(s): not "
                f"enough for one worker of {self.cpus_per_worker:g} CPU(s) and {self.gpus_per_worker:g} GPU(s)."
            )
        threads = str(max(1, int(self.cpus_per_worker)))  # TensorFlow sizes its pools by the machine, not the worker
        env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": threads,
               "TF_NUM_INTEROP_THREADS": threads}  # fmt: skip
        if not self.gpus_per_worker:
            env["CUDA_VISIBLE_DEVICES"] = ""
        worker = ray.remote(_Worker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=-1, max_task_retries=-1,
            runtime_env={"env_vars": env},
        )  # fmt: skip
        self._job = [ray.put(job)]  # nested in a list: a worker fetches it on its first batch, and again if restarted
        self.workers = [worker.remote() for _ in range(n)]

    def map(self, job, items: Iterable, ordered: bool = False) -> Iterator:
        """``job(item)`` for every item, on the workers: results in the order they finish, or (``ordered``) in
        the order of the items, at most ``in_flight`` per worker held back."""
        ray = _ray()
        self._start(job)
        try:
            pending: dict = {}  # ref -> its item's turn
            turn = 0
            for item in items:
                ref = self.workers[turn % len(self.workers)].run.remote(self._job, item)
                pending[ref] = turn
                turn += 1
                while len(pending) >= self.in_flight * len(self.workers):
                    yield from _finished(ray, pending, ordered)
            while pending:
                yield from _finished(ray, pending, ordered)
        finally:
            for w in self.workers:
                ray.kill(w, no_restart=True)
            self.workers, self._job = [], []


def as_engine(engine) -> RayEngine | None:
    """``engine=`` of the functions that can run on Ray: None, ``"ray"`` (a local cluster, or the one this
    process is connected to) or a :class:`RayEngine`."""
    if engine is None or isinstance(engine, RayEngine):
        return engine
    if isinstance(engine, str) and engine == "ray":
        return RayEngine()
    raise InputError(f'engine must be None, "ray" or a cnn_exposed.RayEngine(...), got {engine!r}.')


def _finished(ray, pending: dict, ordered: bool) -> Iterator:
    if ordered:  # the oldest item's result, waiting for it
        ref = min(pending, key=pending.__getitem__)
        del pending[ref]
        yield ray.get(ref)
        return
    done, _ = ray.wait(list(pending), num_returns=1)
    for ref in done:
        del pending[ref]
        yield ray.get(ref)


def model_to_bytes(model) -> bytes:
    """The model as a ``.keras`` file's bytes: how it travels to the workers."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        try:
            model.save(path)
        except Exception as err:  # noqa: BLE001 (any reason a model cannot be saved)
            raise InputError(
                f"Running on Ray sends the model to the workers as a .keras file, and this model cannot be saved as "
                f"one ({type(err).__name__}: {err}); run without Ray, or make the model savable."
            ) from None
        return path.read_bytes()


def model_from_bytes(data: bytes):
    """The model :func:`model_to_bytes` packed, rebuilt in a worker."""
    import tempfile
    from pathlib import Path

    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        return keras.saving.load_model(path, compile=False)


def padded(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with its last row repeated up to ``rows`` rows: a short batch (the last one, or one with unreadable
    files) given the shape the worker's passes were compiled for, so that none compiles a second time."""
    if len(x) >= rows or not len(x):
        return x
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)])


class _Worker:
    """One worker process: the job fetched and set up on its first batch (again after a restart), then fed
    items."""

    def __init__(self):
        self.job = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: list, item):
        if self.job is None:
            self.job = _ray().get(job[0])
            self.job.setup()
        return self.job(item)


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError(
            'Running on Ray needs Ray: pip install "cnn-exposed[ray]" (or pip install ray), then try again.'
        ) from None
    return ray
