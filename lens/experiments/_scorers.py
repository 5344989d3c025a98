"""Where scoring runs: in this process on a loaded model, or as jobs on an executor's workers.

A calibration scores many candidates (each its edits on the whole calibration split) and a
run scores the test split without and with its edits; every one of those is independent.
``LocalScorer`` scores them one after another on a model it holds (``lens run`` as it
always was). ``ExecutorScorer`` sends each as a job to ``lens.record._executor`` (``--executor
local|ray``): the workers hold the model, the driver holds only its ``ModelFacts`` and
assembles the results in candidate order, so the numbers are the ones a local run gives.
The job functions are module-level because Ray pickles them by reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd

from lens.experiments._scoring import score
from lens.experiments._spec_edits import build_edits


@dataclass(frozen=True)
class ModelFacts:
    """What the driver needs of a model it does not load: its name, source and head grid."""

    name: str
    source: str | None
    n_layers: int
    n_heads: int

    def check_heads(self, heads) -> None:
        for layer, head in heads:
            if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
                raise ValueError(f"head ({layer}, {head}) does not exist in {self.name}: "
                                 f"layers 0..{self.n_layers - 1}, heads 0..{self.n_heads - 1}; "
                                 "pick (layer, head) in those ranges")


# --- jobs (run where the model is) ------------------------------------------------------------------
def facts_job(subject, _job=None) -> ModelFacts:
    return ModelFacts(subject.name, getattr(subject, "source", None), subject.n_layers, subject.n_heads)


def score_job(subject, job) -> pd.DataFrame:
    """``job``: (examples, edits, score keywords) -> ``score``'s table."""
    examples, edits, score_kw = job
    return score(subject, examples, edits=edits, **score_kw)


def build_edits_job(subject, job):
    """``job``: (spec, reference prompts) -> the spec's fixed edits (mean ablation needs the model)."""
    spec, prompts = job
    return build_edits(spec, subject, prompts)


# --- scorers -----------------------------------------------------------------------------------------
class LocalScorer:
    """Scores on ``subject`` in this process, one candidate after another (with ``score_fn``:
    the caller passes its module's ``score``, so a test that replaces that one sees the calls)."""

    def __init__(self, subject, score_fn=score):
        self.subject, self.score_fn = subject, score_fn

    def map(self, examples, edit_lists: Sequence, score_kw: dict, *, progress: bool = False,
            descs: Sequence[str] | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
        for i, edits in enumerate(edit_lists):
            desc = descs[i] if descs else "score"
            yield i, self.score_fn(self.subject, examples, edits=edits, progress=progress, desc=desc, **score_kw)

    def build_edits(self, spec, prompts):
            return build_edits(spec, self.subject, prompts)


class ExecutorScorer:
    """Scores as jobs on ``executor`` (``lens.record._executor``) for ``model``; results come back in any
    order and are yielded with their index, each exactly once."""

    def __init__(self, executor, model):  # a name or a lens.model.ModelRef
        self.executor, self.model = executor, model
        self._facts: ModelFacts | None = None

    def facts(self) -> ModelFacts:
        if self._facts is None:
            [(_, self._facts)] = list(self.executor.run(self.model, [None], facts_job, desc=f"load {self.model}"))
        return self._facts

    def map(self, examples, edit_lists: Sequence, score_kw: dict, *, progress: bool = False,
            descs: Sequence[str] | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
        examples = list(examples)
        jobs = [(examples, tuple(edits), dict(score_kw)) for edits in edit_lists]
        yield from self.executor.run(self.model, jobs, score_job, desc=descs[0] if descs else "score")

    def build_edits(self, spec, prompts):
        [(_, edits)] = list(self.executor.run(self.model, [(spec, list(prompts))], build_edits_job, desc="edits"))
        return edits
