"""Experiment specs: a TOML file read and checked completely before any model loads.

    name = "zerotuning-sentiment"          # optional; default: the file's stem
    model = "smollm2"                      # built-in name, model directory, .gguf file or hub id; or a table:
                                           # [model] name = "smollm2", device = "cuda", dtype = "bfloat16",
                                           #         device_map = "auto"   (lens.load's placement)
    seed = 0                               # fixes the task's examples, splits and bootstrap
    metrics = ["accuracy", "logit_diff"]   # summarised with bootstrap CIs (default: accuracy)

    [task]
    name = "sentiment"                     # a built-in task, or: path = "my_task.jsonl"
    calibration = 40                       # calibration examples (disjoint from test)
    test = 100                             # held-out test examples
    shots = 2                              # any other key is an option of the task

    [calibration]                          # either a calibration ...
    method = "zerotuning"                  # zerotuning | zerotuning_profiled | act
    objective = "accuracy"                 # accuracy | entropy | entropy_vocab
    gammas = [0.5, 0.75, 1.5, 2.0]

    [[edits]]                              # ... or fixed edits (or neither: a baseline run)
    type = "scale_attention"
    layer = 3
    factor = 1.5

    [eval]                                 # optional
    batch_size = 16
    prefix_cache = true
    bootstrap = 2000
    confidence = 0.95

    [output]
    db = "runs.duckdb"

    [sweep]                                # optional: a run for each combination
    seed = [0, 1, 2]                       # key: a dotted spec path; value: the list it takes
    "task.shots" = [0, 2]
    "calibration.gammas" = [[0.5], [0.5, 2.0]]

A ``[sweep]`` crosses its lists into runs (``_spec_sweep``: ``parse_specs`` / ``load_specs``);
each run's ``Spec.sweep`` holds its values and ``Spec.spec_hash()`` identifies the resolved
run (``--resume``).

The checks are pydantic models, one per table (``SpecTable`` and the tables it holds: strict
types, no unknown keys, ``Field`` ranges, ``Literal`` choices, ``[[edits]]`` and
``[calibration]`` as unions tagged by ``type`` / ``method``); what needs the world (the
model exists, the task's options, its file, enough examples) is checked after them. A
syntax error names the line and column (tomllib's message); a schema error names the key
path (``calibration.gammas[2]``) and, where it can be found in the text, the line: one
line per error pydantic found.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from pydantic import BaseModel, ValidationError

from lens.experiments._spec_tables import TASK_TABLES, UNION_TAGS, UNIONS, Eval, SpecTable, Task
from lens.experiments._tasks import TaskData, make_task, read_jsonl
from lens.model import BUILTIN, ModelRef

# The tables (pydantic models) and the vocabulary they check are in ``_spec_tables``.


class SpecError(ValueError):
    """A malformed spec: the message names the file, the key path and (where known) the line."""


@dataclass
class Spec:
    """A checked experiment spec. ``config()`` is what the results database records."""

    name: str
    model: str
    seed: int
    task: str
    task_options: dict
    n_calibration: int
    n_test: int
    metrics: tuple[str, ...]
    edits: tuple[dict, ...] = ()
    calibration: dict | None = None
    eval: dict = field(default_factory=lambda: _values(Eval()))
    db: str | None = None
    description: str = ""
    path: str | None = None
    text: str = ""
    sweep: dict = field(default_factory=dict)  # the swept values of this run, {dotted key: value}
    placement: dict = field(default_factory=dict)  # [model] device / dtype / device_map, as given

    @property
    def model_ref(self) -> ModelRef:
        """The model and where it runs (``lens.load``'s placement; unset keys take its defaults)."""
        return ModelRef(self.model, **self.placement)

    def build_task(self) -> TaskData:
        return make_task(self.task, self.n_calibration, self.n_test, self.seed, **self.task_options)

    def config(self) -> dict:
        return {"name": self.name, "model": self.model, "seed": self.seed, "task": self.task,
                "task_options": self.task_options, "n_calibration": self.n_calibration, "n_test": self.n_test,
                "metrics": list(self.metrics), "edits": [dict(e) for e in self.edits],
                "calibration": self.calibration, "eval": self.eval, "description": self.description,
                **({"placement": self.placement} if self.placement else {})}

    def spec_hash(self) -> str:
        """Identifies the resolved run (its checked config, not the file it came from): ``--resume``
        skips a sweep run whose hash has a complete run in the database."""
        text = json.dumps(self.config(), sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: pydantic's error types in this module's words ({got}: the value and its type; {value}: the value; the
#: error's context: ge, expected, ...). Any other type keeps pydantic's message.
MESSAGES = {
    "missing": "missing",
    "nan": "expected a number, got nan",
    "int_type": "expected an integer, got {got}",
    "float_type": "expected a number, got {got}",
    "bool_type": "expected true or false, got {got}",
    "string_type": "expected a string, got {got}",
    "string_pattern_mismatch": "expected a non-empty string, got {got}",
    "list_type": "expected a non-empty list, got {got}",
    "too_short": "expected a non-empty list, got {got}",
    "model_type": "expected a table, got {got}",
    "model_attributes_type": "expected a table, got {got}",
    "literal_error": "expected {expected}, got {value!r}",
    "greater_than_equal": "must be >= {ge}, got {value}",
    "greater_than": "must be > {gt}, got {value}",
    "less_than_equal": "must be <= {le}, got {value}",
    "less_than": "must be < {lt}, got {value}",
}
#: What a missing key is for, by key path.
MISSING = {"model": 'name the model (e.g. model = "smollm2")', "model.name": 'name the model (e.g. name = "smollm2")',
           "task": "add a [task] table with name (or path), calibration and test",
           "task.test": "how many held-out test examples"}


def _keypath(loc: tuple, at: tuple = ()) -> str:
    """``("edits", 0, "gate", "factor")`` -> ``edits[0].factor``: union tags dropped, odd keys quoted."""
    path = ""
    for part in (*(p for p in loc if p not in UNION_TAGS), *at):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            key = part if re.fullmatch(r"[A-Za-z0-9_\-]+", part) else json.dumps(part)  # "a.b" quoted
            path += f".{key}" if path else key
    return path


def _explain(error: dict, prefix: tuple = ()) -> tuple[str, str]:
    """A pydantic error as (TOML key path, message)."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error["input"]
    at: tuple = ()  # below the error's location
    if kind == "spec":
        at, message = ctx["at"], ctx["message"]
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        at = (ctx["discriminator"].strip("'"),)  # the key that tags the union: type or method
        message = (f"missing: one of {', '.join(UNIONS[at[0]])}" if kind == "union_tag_not_found"
                   else f"expected one of {ctx['expected_tags']}, got {value[at[0]]!r}")
    else:
        message = MESSAGES.get(kind, "{msg}, got {got}").format(got=_show(value), value=value, msg=error["msg"],
                                                                **ctx)
    keypath = _keypath((*prefix, *error["loc"]), at)
    if kind == "missing" and keypath in MISSING:
        message = f"missing: {MISSING[keypath]}"
    return keypath, message


class _Check:
    """Where a spec's errors point: its text (for lines), its source and, in a sweep run, the swept values."""

    def __init__(self, text: str, source: str, swept: dict | None = None):
        self.text, self.source = text, source
        self.swept = swept or {}  # in a sweep run: {dotted key: (index in its list, value)}

    def located(self, keypath: str, message: str) -> str:
        line = find_line(self.text, keypath)
        root = re.split(r"[.\[]", keypath, maxsplit=1)[0]
        for key, (i, _) in self.swept.items():
            # the swept value is at keypath or inside it, it made keypath (seed.x swept: seed became a table), or
            # it made keypath's table, which the text lacks ("calibration.gammas" swept into a spec without one)
            if (keypath == key or keypath.startswith((f"{key}.", f"{key}[")) or key.startswith(f"{keypath}.")
                    or (line is None and key.split(".")[0] == root)):
                line = sweep_line(self.text, key)
                where = f" (line {line})" if line else ""
                return f"{self.source}: sweep.{key}[{i}]: {keypath}: {message}{where}{_sweep_note(self.swept)}"
        where = f" (line {line})" if line else ""
        return f"{self.source}: {keypath}: {message}{where}{_sweep_note(self.swept)}"

    def fail(self, keypath: str, message: str) -> NoReturn:
        raise SpecError(self.located(keypath, message))

    def refuse(self, err: ValidationError, prefix: tuple = ()) -> NoReturn:
        """Every error pydantic found, one line each (``prefix``: where the validated table sits)."""
        lines = dict.fromkeys(self.located(*_explain(e, prefix)) for e in err.errors())
        raise SpecError("\n".join(lines)) from None

    def table(self, value, keypath: str) -> dict:
        if not isinstance(value, dict):
            self.fail(keypath, f"expected a table, got {_show(value)}")
        return value


def _show(value) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, dict) else "a table"


def find_line(text: str, keypath: str) -> int | None:
    """Best-effort line of ``keypath`` (``a.b``, ``edits[2].layer``, ``a.b[3]``) in TOML ``text``.

    tomllib gives no positions, so this searches the raw text: a ``[table]`` / ``[[table]]``
    header, then ``key =`` inside it (dotted keys and inline tables are not followed). A key
    that is not written (a missing field) gets the line of the table that should hold it.
    """
    items: list[list] = []
    for p in re.findall(r'"(?:[^"\\]|\\.)*"|[^.\[\]"]+|\[\d+\]', keypath):
        if p.startswith("["):
            if items:
                items[-1][1] = int(p[1:-1])
        else:
            items.append([json.loads(p) if p.startswith('"') else p, None])
    if not items:
        return None
    *tables, (key, _) = items
    table = ".".join(n for n, _ in tables)
    table_index = tables[-1][1] if tables else None
    whole, whole_index = ".".join(n for n, _ in items), items[-1][1]
    seen: dict[str, int] = {}
    current, header = "", None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^\[\[\s*([^\]]+?)\s*\]\]$", line) or re.match(r"^\[\s*([^\]]+?)\s*\]$", line)
        if m:
            current = m.group(1)
            seen[current] = seen.get(current, -1) + 1
            if current == whole and whole_index in (None, seen[current]):
                return n
            if table and current == table and (table_index is None or seen[current] == table_index):
                header = header or n
            continue
        km = re.match(r'^(?:"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_\-]+))\s*=', line)  # "quoted", 'literal', bare
        name = next((g for g in km.groups() if g is not None), None) if km else None
        if name == key and current == table and (table_index is None or seen.get(current) == table_index):
            return n
    return header


def spec_error(spec: Spec, keypath: str, message: str) -> SpecError:
    """A ``SpecError`` found after checking (e.g. a layer the loaded model lacks), located like
    the checker's own: under a swept key, the sweep key and its line."""
    swept = {k: (None, v) for k, v in spec.sweep.items()}
    located = _Check(spec.text, spec.path or "<spec>", swept).located(keypath, message)
    return SpecError(located.replace("[None]: ", ": "))


def _sweep_note(swept: dict) -> str:
    if not swept:
        return ""
    return " [in the sweep run with " + ", ".join(f"{k} = {_brief(v)}" for k, (_, v) in swept.items()) + "]"


def _brief(value) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def sweep_line(text: str, key: str) -> int | None:
    """Line of ``key`` (``task.shots``, quoted or bare) inside the ``[sweep]`` table of ``text``."""
    parts = key.split(".")
    bare = r"\s*\.\s*".join(re.escape(p) for p in parts)
    pattern = re.compile(rf'^(?:"{re.escape(key)}"|\'{re.escape(key)}\'|{bare})\s*=')
    inside = False
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if re.match(r"^\[\[?[^\]]*\]\]?$", line):
            inside = line.replace(" ", "") == "[sweep]"
            continue
        if inside and pattern.match(line):
            return n
    return find_line(text, "sweep")


def _toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{source}: not valid TOML: {err}") from None


def parse_spec(text: str, *, source: str = "<spec>", base_dir: Path | None = None) -> Spec:
    """Check a spec given as TOML text (see the module docstring for the format); one run only
    (a spec with a ``[sweep]`` is read by ``parse_specs``)."""
    raw = _toml(text, source)
    c = _Check(text, source)
    if "sweep" in raw:
        c.fail("sweep", "this spec is a sweep of several runs: read it with parse_specs / load_specs")
    return _check_spec(raw, c, source, base_dir)


def _check_spec(raw: dict, c: _Check, source: str, base_dir: Path | None) -> Spec:
    """Check a parsed spec: its tables (``SpecTable``), then what needs the world: the model, the task."""
    try:
        table = SpecTable.model_validate(raw)
    except ValidationError as err:
        c.refuse(err)
    named = isinstance(table.model, str)
    model, placement = (table.model, {}) if named else (table.model.name, table.model.placement())
    _check_model(c, model, base_dir)
    task, options = _check_task(c, raw["task"], table, model, base_dir)
    return Spec(name=table.name or (Path(source).stem if source != "<spec>" else "experiment"), model=model,
                seed=table.seed, task=task, task_options=options, n_calibration=table.task.calibration,
                n_test=table.task.test, metrics=tuple(table.metrics), edits=tuple(map(_values, table.edits or ())),
                calibration=_values(table.calibration) if table.calibration else None, eval=_values(table.eval),
                db=table.output.db, description=table.description, text=c.text, placement=placement)


def _values(table: BaseModel) -> dict:
    """A checked table's values, given or default; not ``model_dump``, which would serialise (a tuple to a list)."""
    return {key: value for key, value in table}


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file; relative task paths are relative to the spec's folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found; give the path of a .toml spec (see docs/experiments/*.toml)")
    spec = parse_spec(path.read_text(encoding="utf-8"), source=str(path), base_dir=path.parent)
    spec.path = str(path)
    return spec


def _check_model(c: _Check, model: str, base_dir: Path | None) -> None:
    if model in BUILTIN:
        return
    path = Path(model).expanduser()
    candidates = [path] + ([base_dir / path] if base_dir is not None and not path.is_absolute() else [])
    if any(p.is_dir() or (p.suffix == ".gguf" and p.is_file()) for p in candidates):
        return
    try:
        validate_repo_id(model)
    except HFValidationError as err:
        c.fail("model", f"unknown model {model!r}: not a built-in name ({', '.join(BUILTIN)}), not a model "
                        f"directory, not a .gguf file and not a hub id ({err})")
    if is_offline_mode() and not isinstance(_cached_config(model), str):
        c.fail("model", f"{model!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}), and the hub "
                        "is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)")
    # else a hub id ("gpt2", "org/name"): resolved by transformers when the run starts


def _cached_config(repo: str):
    try:
        return try_to_load_from_cache(repo, "config.json")
    except Exception:  # an id the hub would refuse is not cached either
        return None


def _check_task(c: _Check, raw: dict, spec: SpecTable, model: str, base_dir: Path | None) -> tuple[str, dict]:
    """The task (a built-in name or a file's path) and its options, typed by the named task's defaults; the file
    is read and the task built once, so too few examples for the counts asked fail here, before any model loads."""
    task = spec.task
    try:
        checked = TASK_TABLES[task.name].model_validate(raw)
    except ValidationError as err:
        c.refuse(err, ("task",))
    options = {key: getattr(checked, key) for key in raw if key not in Task.model_fields}  # as given
    if task.name == "induction" and "vocab" not in options:
        options["vocab"] = "organism" if model in ("induction", "bigram_backcopy") else "words"
    name = task.name
    if name is None:
        path = Path(task.path)
        path = base_dir / path if not path.is_absolute() and base_dir is not None else path
        try:
            read_jsonl(path)  # a malformed task file fails here, naming its line and field
        except ValueError as err:
            raise SpecError(f"{c.source}: task.path: {err}") from None
        name = str(path)
    try:
        make_task(name, task.calibration, task.test, spec.seed, **options)  # enough examples for the counts asked?
    except ValueError as err:
        c.fail("task", str(err))
    return name, options
