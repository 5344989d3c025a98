"""Scripted intervention experiments: tasks, scoring, calibration, specs, runs and their database.

The flow of ``lens run SPEC.toml``: ``load_spec`` (checked before any model loads) ->
``make_task`` (disjoint calibration and test splits by seed) -> ``zerotuning`` /
``zerotuning_profiled`` / ``act_search`` on the calibration split, or the spec's fixed
edits -> ``score`` on the test split with and without the edits -> BCa bootstrap intervals ->
the DuckDB results database (``list_runs``, ``compare_runs``, ``load_run``). A spec's
``[sweep]`` is crossed into runs (``load_specs``) and ``run_sweep`` runs them, here or with
each scoring job on Ray workers (``lens.record._executor``), resumable by each run's spec hash.
"""

from lens.experiments._bootstrap import bootstrap_ci, paired_bootstrap_ci
from lens.experiments._calibrate import Calibration, act_search, zerotuning, zerotuning_edits, zerotuning_profiled
from lens.experiments._commands import run_command, runs_command
from lens.experiments._db import (COMPLETE, DEFAULT_DB, LIVE_STATES, compare_runs, list_runs, load_run, query_runs,
                                  run_summaries)
from lens.experiments._model_checks import confirm_dormant, losses, needle_samples, retrieval_scores
from lens.experiments._runner import RunResult, run_spec
from lens.experiments._scoring import choice_token_ids, last_logits, score
from lens.experiments._spec import Spec, SpecError, load_spec, parse_spec
from lens.experiments._spec_edits import build_edits
from lens.experiments._spec_sweep import load_specs, parse_specs
from lens.experiments._sweep import run_sweep, sweep_table
from lens.experiments._tasks import TASKS, Example, TaskData, TaskFileError, load_jsonl, make_task, read_jsonl
from lens.experiments._tasks import NAMES as IOI_NAMES  # the names IOI prompts draw from

__all__ = [
    "COMPLETE", "DEFAULT_DB", "IOI_NAMES", "LIVE_STATES", "TASKS", "Calibration", "Example", "RunResult", "Spec",
    "SpecError", "TaskData", "TaskFileError", "act_search", "bootstrap_ci", "build_edits", "choice_token_ids",
    "compare_runs", "confirm_dormant", "last_logits", "list_runs", "load_jsonl", "load_run", "load_spec",
    "load_specs", "losses", "make_task", "needle_samples", "paired_bootstrap_ci", "parse_spec", "parse_specs",
    "query_runs", "read_jsonl", "retrieval_scores", "run_command", "run_spec", "run_summaries", "run_sweep",
    "runs_command", "score", "sweep_table", "zerotuning", "zerotuning_edits", "zerotuning_profiled",
]
