"""Executors: independent jobs that each need a loaded model, run here or on Ray actors.

``make_executor("local")`` runs jobs one after another in this process (as the workbench
always has); ``make_executor("ray", address=..., workers=...)`` runs them on Ray actors
that each load a model once and keep it (one actor per GPU when the cluster has GPUs,
else ``workers`` actors). Both have one method::

    for index, result in executor.run(model, jobs, fn, desc="shards"):
        ...

``fn(subject, job)`` must be a module-level function (Ray pickles it by reference) and
return something picklable. Results arrive as jobs finish, in any order, each exactly
once. A job whose actor dies (a crash, ``ray.kill``) is retried on a fresh actor up to
``retries`` times; a job that raises is not retried (it would raise again) and its error
is raised in the driver. One progress bar counts finished jobs and failures. Nothing
here writes files: the driver that consumes ``run`` does (results are written once).
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
    """The body of a Ray actor: keeps its loaded model between jobs."""

    def __init__(self):
        self._models: dict[str, Any] = {}

    def call(self, model: str, fn: Callable, job) -> Any:
        return fn(cached_subject(self._models, model), job)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Jobs on Ray actors that each hold a loaded model; dead actors are replaced and their jobs retried."""

    kind = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, retries: int = 3,
                 progress: bool = True):
        try:
            import ray
        except ImportError:
            raise ModuleNotFoundError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.gpus_per_actor = 1 if gpus else 0
        self.workers = gpus if gpus else max(1, workers or 1)
        self.retries = retries
        self.progress = progress
        self._cls = ray.remote(num_gpus=self.gpus_per_actor, num_cpus=1, max_restarts=0)(_Worker)
        self.actors = [self._cls.remote() for _ in range(self.workers)]

    def _replace(self, actor):
        i = self.actors.index(actor)
        self.actors[i] = self._cls.remote()
        return self.actors[i]

    def run(self, model: str, jobs: Sequence, fn: Callable, *, desc: str = "jobs") -> Iterator[tuple[int, Any]]:
        ray = self.ray
        pending = list(range(len(jobs)))[::-1]  # a stack: pop() takes job 0 first
        tries = [0] * len(jobs)
        running: dict[Any, tuple[int, Any]] = {}  # ref -> (job index, actor)
        failures = 0
        bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not self.progress, leave=False)
        fn_ref = ray.put(fn)
        try:
            idle = list(self.actors)
            while pending or running:
                while pending and idle:
                    actor = idle.pop()
                    i = pending.pop()
                    running[actor.call.remote(model, fn_ref, jobs[i])] = (i, actor)
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                i, actor = running.pop(ref)
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                    failures += 1
                    tries[i] += 1
                    bar.set_postfix(failures=failures)
                    if tries[i] > self.retries:
                        raise RuntimeError(f"{desc}: job {i} lost its worker {tries[i]} times; giving up") from None
                    pending.append(i)  # retried first, on a fresh actor
                    idle.append(self._replace(actor))
                    continue
                except ray.exceptions.RayTaskError as err:  # the job itself raised: re-raise its error here
                    raise err.as_instanceof_cause() from None
                idle.append(actor)
                bar.update(1)
                yield i, result
        finally:
            bar.close()
            for ref in running:
                ray.cancel(ref, force=False)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
