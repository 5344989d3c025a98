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

A syntax error names the line and column (tomllib's message); a schema error names the key
path (``calibration.gammas[2]``) and, where it can be found in the text, the line.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from lens.experiments._scoring import OUTPUTS
from lens.experiments._tasks import TASKS, TaskData, make_task, read_jsonl, task_options
from lens.model import BUILTIN, ModelRef, resolve_placement

# The calibration vocabulary a spec may name (``_calibrate`` implements each).
OBJECTIVES = ("accuracy", "entropy", "entropy_vocab")
SCOPES = ("layer", "head_index", "all")

METRICS = ("accuracy", *OUTPUTS[1:])
METHODS = ("zerotuning", "zerotuning_profiled", "act")
#: Most examples (calibration + test) a spec may ask for. Checking a spec builds its task, and the
#: generated tasks build ~20k examples a second (ioi, colored_objects, induction: 10k in 0.4-0.6 s), so
#: test = 2**31 hung the check (found by tests/test_fuzz_specs.py); 50k keeps it under ~3 s, and a
#: run over more examples takes hours on a CPU anyway.
MAX_EXAMPLES = 50_000
#: Largest integer task option (shots, filler, period, n_choices: counts inside every prompt). 1,000
#: is past any model's context here; colored_objects shots = 10**7 hung the check (test_fuzz_specs.py).
MAX_TASK_OPTION = 1_000


class SpecError(ValueError):
    """A malformed spec: the message names the file, the key path and (where known) the line."""


EDIT_FIELDS: dict[str, dict[str, tuple]] = {
    # type -> field -> (kind, default); kind: "heads", "keys", "float" (>= 0), "real", "float?", "bool", "mode",
    # "span", "keyset"
    "scale_attention": {"layer": ("heads", None), "head": ("heads", None), "keys": ("keys", 0),
                        "factor": ("float", ...)},
    "key_bias": {"layer": ("heads", None), "head": ("heads", None), "keys": ("keys", 0), "bias": ("real", ...)},
    "move_to_bos": {"layer": ("heads", None), "head": ("heads", None)},
    "ablate": {"layer": ("heads", None), "head": ("heads", None), "mode": ("mode", "zero")},
    "gate": {"layer": ("heads", None), "head": ("heads", None), "factor": ("float", ...)},
    "act": {"layer": ("heads", None), "head": ("heads", None), "beta": ("float", 0.4), "theta": ("float", 0.1),
            "alpha": ("float?", None), "renormalise": ("bool", False)},
    "var": {"layer": ("heads", None), "head": ("heads", None), "sinks": ("keyset", (0,)), "target": ("span", ...),
            "keep": ("float", 0.6), "min_target": ("float", 0.2), "max_sink_share": ("float", 0.5)},
}

CALIBRATION_FIELDS: dict[str, dict[str, tuple]] = {
    "zerotuning": {"objective": ("objective", "accuracy"), "scopes": ("scopes", list(SCOPES)),
                   "gammas": ("gammas", [0.5, 0.75, 1.25, 1.5, 2.0]), "layers": ("ints?", None),
                   "heads": ("ints?", None)},
    "zerotuning_profiled": {"objective": ("objective", "accuracy"), "unit": ("unit", "layer"),
                            "up": ("float", 1.5), "down": ("float", 0.67),
                            "gammas": ("gammas", [0.5, 0.75, 1.25, 1.5, 2.0]), "layers": ("ints?", None),
                            "heads": ("ints?", None)},
    "act": {"objective": ("objective", "accuracy"), "beta": ("float", 0.4), "theta": ("float", 0.1),
            "alpha": ("float?", None), "layers": ("ints?", None), "heads": ("ints?", None),
            "max_heads": ("int?", None)},
}

EVAL_FIELDS = {"batch_size": 16, "prefix_cache": True, "backend": "auto", "bootstrap": 2000, "confidence": 0.95}
TOP_LEVEL = ("name", "description", "model", "seed", "metrics", "task", "calibration", "edits", "eval", "output",
             "sweep")


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
    eval: dict = field(default_factory=lambda: dict(EVAL_FIELDS))
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


class _Check:
    def __init__(self, text: str, source: str, swept: dict | None = None):
        self.text, self.source = text, source
        self.swept = swept or {}  # in a sweep run: {dotted key: (index in its list, value)}

    def fail(self, keypath: str, message: str):
        for key, (i, value) in self.swept.items():
            # the swept value is at keypath or inside it, or it made keypath (seed.x swept: seed became a table)
            if keypath == key or keypath.startswith((f"{key}.", f"{key}[")) or key.startswith(f"{keypath}."):
                line = sweep_line(self.text, key)
                where = f" (line {line})" if line else ""
                raise SpecError(f"{self.source}: sweep.{key}[{i}]: {keypath}: {message}{where}"
                                f"{_sweep_note(self.swept)}")
        line = find_line(self.text, keypath)
        where = f" (line {line})" if line else ""
        raise SpecError(f"{self.source}: {keypath}: {message}{where}{_sweep_note(self.swept)}")

    def table(self, value, keypath: str) -> dict:
        if not isinstance(value, dict):
            self.fail(keypath, f"expected a table, got {_show(value)}")
        return value

    def unknown(self, table: dict, known, keypath: str):
        extra = [k for k in table if k not in known]
        if extra:
            prefix = f"{keypath}." if keypath else ""
            key = extra[0] if re.fullmatch(r"[A-Za-z0-9_\-]+", extra[0]) else json.dumps(extra[0])  # "a.b" quoted
            self.fail(f"{prefix}{key}", f"unknown key; known keys here: {', '.join(known)}")

    def int_(self, value, keypath: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(keypath, f"expected an integer, got {_show(value)}")
        if minimum is not None and value < minimum:
            self.fail(keypath, f"must be >= {minimum}, got {value}")
        return value

    def float_(self, value, keypath: str, minimum: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(keypath, f"expected a number, got {_show(value)}")
        if value != value:  # nan: every range check below would pass it
            self.fail(keypath, "expected a number, got nan")
        if minimum is not None and value < minimum:
            self.fail(keypath, f"must be >= {minimum}, got {value}")
        return float(value)

    def str_(self, value, keypath: str, choices=None) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(keypath, f"expected a non-empty string, got {_show(value)}")
        if choices is not None and value not in choices:
            self.fail(keypath, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def ints(self, value, keypath: str, minimum: int = 0) -> list[int]:
        if not isinstance(value, list) or not value:
            self.fail(keypath, f"expected a non-empty list of integers, got {_show(value)}")
        return [self.int_(v, f"{keypath}[{i}]", minimum) for i, v in enumerate(value)]

    def heads(self, value, keypath: str):
        if isinstance(value, list):
            return tuple(self.ints(value, keypath))
        return self.int_(value, keypath, 0)


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
    try:
        _Check(spec.text, spec.path or "<spec>", swept).fail(keypath, message)
    except SpecError as err:
        return SpecError(str(err).replace("[None]: ", ": "))
    raise AssertionError("unreachable")


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
    text = c.text
    c.unknown(raw, TOP_LEVEL, "")
    if "model" not in raw:
        c.fail("model", "missing: name the model (e.g. model = \"smollm2\")")
    model, placement = _check_model_entry(c, raw["model"])
    _check_model(c, model, base_dir)
    seed = c.int_(raw.get("seed", 0), "seed", 0)
    name = c.str_(raw.get("name", Path(source).stem if source != "<spec>" else "experiment"), "name")
    description = raw.get("description", "")
    if not isinstance(description, str):
        c.fail("description", f"expected a string, got {_show(description)}")

    metrics = raw.get("metrics", ["accuracy"])
    if not isinstance(metrics, list) or not metrics:
        c.fail("metrics", f"expected a non-empty list of metric names, got {_show(metrics)}")
    for i, m in enumerate(metrics):
        c.str_(m, f"metrics[{i}]", METRICS)

    if "task" not in raw:
        c.fail("task", "missing: add a [task] table with name (or path), calibration and test")
    task = c.table(raw["task"], "task")
    if ("name" in task) == ("path" in task):
        c.fail("task", "give exactly one of task.name (a built-in task) or task.path (a JSONL file)")
    n_cal = c.int_(task.get("calibration", 0), "task.calibration", 0)
    if "test" not in task:
        c.fail("task.test", "missing: how many held-out test examples")
    n_test = c.int_(task["test"], "task.test", 1)
    if n_cal + n_test > MAX_EXAMPLES:
        c.fail("task.test" if n_test > n_cal else "task.calibration",
               f"{n_cal} calibration + {n_test} test examples is more than {MAX_EXAMPLES:,}; ask for fewer")
    options = {k: v for k, v in task.items() if k not in ("name", "path", "calibration", "test")}
    if "name" in task:
        task_name = c.str_(task["name"], "task.name", tuple(TASKS))
        known = task_options(task_name)
        c.unknown(options, ["name", "path", "calibration", "test", *known], "task")
        for k, v in options.items():
            default = known[k]
            if isinstance(default, bool) or isinstance(default, str):
                if type(v) is not type(default):
                    c.fail(f"task.{k}", f"expected a {type(default).__name__}, got {_show(v)}")
            elif isinstance(default, int):
                if c.int_(v, f"task.{k}", 0) > MAX_TASK_OPTION:
                    c.fail(f"task.{k}", f"must be <= {MAX_TASK_OPTION:,}, got {v}")
            elif isinstance(default, float):
                c.float_(v, f"task.{k}")
        if "vocab" in known and "vocab" not in options and task_name == "induction":
            options["vocab"] = "organism" if model in ("induction", "bigram_backcopy") else "words"
    else:
        c.unknown(options, ["path", "calibration", "test"], "task")
        path = Path(c.str_(task["path"], "task.path"))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            read_jsonl(path)  # a malformed task file fails here, naming its line and field
        except ValueError as err:
            raise SpecError(f"{source}: task.path: {err}") from None
        task_name = str(path)
    try:
        make_task(task_name, n_cal, n_test, seed, **options)  # enough examples for the counts asked?
    except ValueError as err:
        c.fail("task", str(err))

    if "calibration" in raw and "edits" in raw:
        c.fail("calibration", "give either [calibration] (edits found on the calibration set) or [[edits]] "
                              "(fixed edits), not both")
    calibration = _check_calibration(c, raw["calibration"], n_cal) if "calibration" in raw else None
    edits = ()
    if "edits" in raw:
        if not isinstance(raw["edits"], list) or not raw["edits"]:
            c.fail("edits", "expected one or more [[edits]] tables")
        edits = tuple(_check_edit(c, e, f"edits[{i}]", n_cal) for i, e in enumerate(raw["edits"]))

    ev = dict(EVAL_FIELDS)
    if "eval" in raw:
        table = c.table(raw["eval"], "eval")
        c.unknown(table, list(EVAL_FIELDS), "eval")
        if "batch_size" in table:
            ev["batch_size"] = c.int_(table["batch_size"], "eval.batch_size", 1)
        if "prefix_cache" in table:
            if not isinstance(table["prefix_cache"], bool):
                c.fail("eval.prefix_cache", f"expected true or false, got {_show(table['prefix_cache'])}")
            ev["prefix_cache"] = table["prefix_cache"]
        if "backend" in table:
            ev["backend"] = c.str_(table["backend"], "eval.backend", ("auto", "eager", "chunked"))
        if "bootstrap" in table:
            ev["bootstrap"] = c.int_(table["bootstrap"], "eval.bootstrap", 100)
        if "confidence" in table:
            conf = c.float_(table["confidence"], "eval.confidence")
            if not 0 < conf < 1:
                c.fail("eval.confidence", f"must be between 0 and 1, got {conf}")
            ev["confidence"] = conf
    db = None
    if "output" in raw:
        out = c.table(raw["output"], "output")
        c.unknown(out, ["db"], "output")
        if "db" in out:
            db = c.str_(out["db"], "output.db")
    return Spec(name=name, model=model, seed=seed, task=task_name, task_options=options, n_calibration=n_cal,
                n_test=n_test, metrics=tuple(metrics), edits=edits, calibration=calibration, eval=ev, db=db,
                description=description, text=text, placement=placement)


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file; relative task paths are relative to the spec's folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found; give the path of a .toml spec (see docs/experiments/*.toml)")
    spec = parse_spec(path.read_text(encoding="utf-8"), source=str(path), base_dir=path.parent)
    spec.path = str(path)
    return spec


MODEL_FIELDS = ("name", "device", "dtype", "device_map")


def _check_model_entry(c: _Check, value) -> tuple[str, dict]:
    """``model = "name"``, or a ``[model]`` table with the name and where it runs."""
    if not isinstance(value, dict):
        return c.str_(value, "model"), {}
    c.unknown(value, MODEL_FIELDS, "model")
    if "name" not in value:
        c.fail("model.name", "missing: name the model (e.g. name = \"smollm2\")")
    name = c.str_(value["name"], "model.name")
    placement = {key: c.str_(value[key], f"model.{key}") for key in MODEL_FIELDS[1:] if key in value}
    if "device" in placement and "device_map" in placement:
        c.fail("model.device_map", "give device or device_map, not both: a device map places every module itself")
    for key, given in placement.items():
        try:  # the form only: whether this machine has the device is known when the run starts
            resolve_placement(**{key: given}, available=lambda: ("cuda", "mps"))
        except ValueError as err:
            c.fail(f"model.{key}", str(err))
    return name, placement


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


def _check_fields(c: _Check, table: dict, fields: dict, keypath: str) -> dict:
    out = {}
    for key, (kind, default) in fields.items():
        kp = f"{keypath}.{key}"
        if key not in table:
            if default is ...:
                c.fail(kp, "missing")
            out[key] = default
            continue
        v = table[key]
        if kind == "heads":
            out[key] = c.heads(v, kp)
        elif kind == "keys":
            out[key] = tuple(c.ints(v, kp)) if isinstance(v, list) else c.int_(v, kp)
        elif kind == "keyset":
            out[key] = tuple(c.ints(v, kp)) if isinstance(v, list) else (c.int_(v, kp, 0),)
        elif kind == "span":
            span = c.ints(v, kp)
            if len(span) != 2 or span[0] > span[1]:
                c.fail(kp, f"expected [start, stop] with start <= stop, got {v!r}")
            out[key] = tuple(span)
        elif kind == "float":
            out[key] = c.float_(v, kp, 0.0)
        elif kind == "real":
            out[key] = c.float_(v, kp)
        elif kind == "float?":
            out[key] = c.float_(v, kp, 0.0)
        elif kind == "int?":
            out[key] = c.int_(v, kp, 1)
        elif kind == "ints?":
            out[key] = c.ints(v, kp)
        elif kind == "bool":
            if not isinstance(v, bool):
                c.fail(kp, f"expected true or false, got {_show(v)}")
            out[key] = v
        elif kind == "mode":
            out[key] = c.str_(v, kp, ("zero", "mean"))
        elif kind == "objective":
            out[key] = c.str_(v, kp, OBJECTIVES)
        elif kind == "unit":
            out[key] = c.str_(v, kp, ("layer", "head", "head_index"))
        elif kind == "scopes":
            out[key] = [c.str_(s, f"{kp}[{i}]", SCOPES) for i, s in enumerate(v if isinstance(v, list) else [v])]
        elif kind == "gammas":
            if not isinstance(v, list) or not v:
                c.fail(kp, f"expected a non-empty list of positive numbers, got {_show(v)}")
            gam = [c.float_(g, f"{kp}[{i}]") for i, g in enumerate(v)]
            for i, g in enumerate(gam):
                if g <= 0:
                    c.fail(f"{kp}[{i}]", f"gamma must be > 0, got {g}")
            out[key] = gam
    return out


def _check_edit(c: _Check, raw, keypath: str, n_cal: int) -> dict:
    table = c.table(raw, keypath)
    if "type" not in table:
        c.fail(f"{keypath}.type", f"missing: one of {', '.join(EDIT_FIELDS)}")
    kind = c.str_(table["type"], f"{keypath}.type", tuple(EDIT_FIELDS))
    fields = EDIT_FIELDS[kind]
    c.unknown(table, ["type", *fields], keypath)
    out = {"type": kind, **_check_fields(c, table, fields, keypath)}
    if kind == "ablate" and out["mode"] == "mean" and n_cal < 1:
        c.fail(f"{keypath}.mode", "mean ablation averages over the calibration prompts: set task.calibration >= 1")
    if kind == "var" and not 0 <= out["keep"] <= 1:
        c.fail(f"{keypath}.keep", f"must be in [0, 1], got {out['keep']}")
    return out


def _check_calibration(c: _Check, raw, n_cal: int) -> dict:
    table = c.table(raw, "calibration")
    if "method" not in table:
        c.fail("calibration.method", f"missing: one of {', '.join(METHODS)}")
    method = c.str_(table["method"], "calibration.method", METHODS)
    fields = CALIBRATION_FIELDS[method]
    c.unknown(table, ["method", *fields], "calibration")
    out = {"method": method, **_check_fields(c, table, fields, "calibration")}
    if n_cal < 1:
        c.fail("task.calibration", "a [calibration] needs calibration examples: set task.calibration >= 1")
    if method == "zerotuning_profiled" and not (out["up"] > 1 and 0 < out["down"] < 1):
        c.fail("calibration.up", f"profiling needs up > 1 and 0 < down < 1, got up={out['up']}, down={out['down']}")
    return out
