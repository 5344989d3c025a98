"""Executors: independent jobs that each need a loaded model, run here or on Ray actors.

``make_executor("local")`` runs jobs one after another in this process (as the workbench
always has); ``make_executor("ray", address=..., workers=...)`` runs them on Ray actors
that each load a model once and keep it (one actor per GPU when the cluster has GPUs,
else ``workers`` actors). Both have one method::

    for index, result in executor.run(model, jobs, fn, desc="shards"):
        ...

``model`` is a name or a ``lens.model.ModelRef``; a Ray actor loads it where Ray placed it
(``ModelRef.for_ray_actor``: on its GPU, bf16 unless the ref says otherwise; else the CPU).
``fn(subject, job)`` must be a module-level function (Ray pickles it by reference) and
return something picklable. Results arrive as jobs finish, in any order, each exactly
once, with the job's index. Fault tolerance is Ray's own: the actors restart when they die
(a crash, ``ray.kill(actor, no_restart=False)``) and Ray retries the job that was running
on the restarted actor, up to ``retries`` times per job; after that the driver raises a
RuntimeError naming the job. A job that raises is not retried (it would raise again) and
its own exception is raised in the driver. Ray jobs are spread over the actors by
``ray.util.ActorPool``; one progress bar counts finished jobs. Worker output (logs,
warnings) reaches the driver. Nothing here writes files: the driver that consumes ``run``
does (results are written once).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from lens.model import ModelRef

__all__ = ["LocalExecutor", "RayExecutor", "cached_subject", "make_executor", "RAY_INSTALL"]

RAY_INSTALL = "pip install 'attention-workbench[ray]'  (or: pip install 'ray>=2.30')"
KINDS = ("local", "ray")


def make_executor(kind: str = "local", *, address: str | None = None, workers: int | None = None,
                  retries: int = 3, progress: bool = True):
    """An executor by name: ``"local"`` or ``"ray"`` (needs the ``ray`` extra)."""
    if kind not in KINDS:
        raise ValueError(f"executor must be one of {KINDS}, got {kind!r}")
    if kind == "local":
        if address is not None:
            raise ValueError("--address is for --executor ray; the local executor runs in this process")
        return LocalExecutor(progress=progress)
    return RayExecutor(address=address, workers=workers, retries=retries, progress=progress)


def _ray():
    """The ``ray`` module, or an error that says how to install it (the one place Ray is imported)."""
    try:
        import ray  # optional dependency: only the [ray] extra installs it
    except ImportError:
        raise ModuleNotFoundError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def cached_subject(cache: dict, model: str | ModelRef, echo=None):
    """``model`` loaded (a name, or a ``ModelRef`` with its placement), kept in ``cache``: one model at a
    time per process (a sweep over models swaps them)."""
    ref = ModelRef.of(model)
    if ref not in cache:
        cache.clear()
        if echo is not None:
            echo(f"loading {ref} ...")
        cache[ref] = ref.load()
    return cache[ref]


class LocalExecutor:
    """Jobs one after another in this process; the loaded model is kept between calls."""

    kind = "local"

    def __init__(self, *, progress: bool = True):
        self.progress = progress
        self._models: dict[str, Any] = {}
        self.workers = 1

    def run(self, model: str, jobs: Sequence, fn: Callable, *, desc: str = "jobs") -> Iterator[tuple[int, Any]]:
        bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not self.progress, leave=False)
        try:
            for i, job in enumerate(jobs):
                yield i, fn(cached_subject(self._models, model), job)
                bar.update(1)
        finally:
            bar.close()

    def close(self) -> None:
        self._models.clear()


class _Worker:
    """The body of a Ray actor: keeps its loaded model between jobs, placed where Ray put the actor."""

    def __init__(self):
        self._models: dict[ModelRef, Any] = {}

    @staticmethod
    def _ref(model: str | ModelRef) -> ModelRef:
        return ModelRef.of(model).for_ray_actor(_ray().get_gpu_ids())

    def call(self, model: str | ModelRef, fn: Callable, index: int, job) -> tuple[int, Any]:
        """``(index, fn(subject, job))``: the index comes back with the result (``ActorPool`` returns results only)."""
        return index, fn(cached_subject(self._models, self._ref(model)), job)

    def placement(self, model: str | ModelRef) -> tuple[list, ModelRef]:
        """``(ray.get_gpu_ids(), the ref this actor would load)``, without loading anything (tests ask)."""
        return list(_ray().get_gpu_ids()), self._ref(model)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Jobs on Ray actors that each hold a loaded model; Ray restarts a dead actor and retries its job."""

    kind = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, retries: int = 3,
                 progress: bool = True):
        ray = _ray()
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=True, ignore_reinit_error=True)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.gpus_per_actor = 1 if gpus else 0
        self.workers = gpus if gpus else max(1, workers or 1)
        self.retries = retries
        self.progress = progress
        # A dead actor always restarts (max_restarts=-1: the limit is per job, not per actor over a long
        # sweep); the job it was running is retried on it up to `retries` times. A job that raises is not
        # retried (actor methods do not retry exceptions unless told to).
        self._cls = ray.remote(num_gpus=self.gpus_per_actor, num_cpus=1, max_restarts=-1,
                               max_task_retries=retries)(_Worker)
        self.actors = [self._cls.remote() for _ in range(self.workers)]

    def run(self, model: str | ModelRef, jobs: Sequence, fn: Callable, *,
            desc: str = "jobs") -> Iterator[tuple[int, Any]]:
        ray = self.ray
        pool = ray.util.ActorPool(self.actors)
        fn_ref = ray.put(fn)
        sent: dict[int, Any] = {}  # job index -> its ObjectRef, until its result is yielded

        def send(actor, i):
            sent[i] = actor.call.remote(model, fn_ref, i, jobs[i])
            return sent[i]

        for i in range(len(jobs)):
            pool.submit(send, i)  # the pool sends a job when one of its actors is free
        bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not self.progress, leave=False)
        try:
            while pool.has_next():
                try:
                    i, result = pool.get_next_unordered()
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                    lost = self._lost(sent)
                    which = f"job {lost[0]}" if len(lost) == 1 else f"jobs {lost}" if lost else "a job"
                    raise RuntimeError(f"{desc}: {which} lost its worker {self.retries + 1} time(s) (Ray restarted "
                                       f"the actor and retried it {self.retries} time(s)); giving up: "
                                       f"{type(err).__name__}") from err
                except ray.exceptions.RayTaskError as err:  # the job itself raised: re-raise its error here
                    raise err.as_instanceof_cause() from None
                del sent[i]
                bar.update(1)
                yield i, result
        finally:
            bar.close()
            for ref in sent.values():  # stopped early: jobs not started are dropped, queued ones cancelled
                ray.cancel(ref, force=False)

    def _lost(self, sent: dict[int, Any]) -> list[int]:
        """The jobs among ``sent`` that finished by losing their actor (for the error message)."""
        ray = self.ray
        if not sent:
            return []
        ready, _ = ray.wait(list(sent.values()), num_returns=len(sent), timeout=0, fetch_local=False)
        ready = set(ready)
        lost = []
        for i, ref in sent.items():
            if ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                    lost.append(i)
                except Exception:  # noqa: BLE001 - another outcome: not this job
                    pass
        return sorted(lost)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)  # no_restart=True: gone for good
        self.actors = []
