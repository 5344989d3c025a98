"""Fuzzing experiment specs: a mutated spec either checks or fails with a ``SpecError`` naming the field and line.

Hypothesis starts from the example specs in docs/experiments/ and the organism spec of
test_experiments.py and mutates them either as data (drop a key, change a value's type,
add an unknown key, an out-of-range value, an empty table, a small ``[sweep]``), written back as TOML, or as
text (duplicate, delete or swap lines, insert garbage, truncate). Every result goes through
``parse_specs`` only (no model is loaded, no run starts) and must either give ``Spec``s or
raise ``SpecError`` each line of whose message (one per error) names the source, the key path and, when the key is
written in the text, the line that holds it (a TOML syntax error: tomllib's line and
column). A bare KeyError, TypeError, AttributeError... is a bug in the checks.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from skips import require
require("hypothesis")
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from test_experiments import GOOD as ORGANISM  # the organism spec the experiment tests use

from lens.experiments import Spec, SpecError, parse_specs

EXPERIMENTS = Path(__file__).resolve().parents[2] / "docs" / "experiments"
BASES = [ORGANISM, *(p.read_text(encoding="utf-8") for p in sorted(EXPERIMENTS.glob("*.toml")))]
SOURCE = "fuzz.toml"
BARE = re.compile(r"^[A-Za-z0-9_-]+$")


# --- a small TOML writer (tomllib only reads) --------------------------------------------------
def _key(k: str) -> str:
    return k if BARE.match(k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict) -> str:
    """Scalars first, then one [table] per top-level dict and [[name]] per list of dicts."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]", *(f"{_key(a)} = {_value(x)}" for a, x in v.items())]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines += ["", f"[[{_key(k)}]]", *(f"{_key(a)} = {_value(x)}" for a, x in item.items())]
    return "\n".join(lines) + "\n"


# --- mutations ------------------------------------------------------------------------------------
KEYS = ["name", "model", "seed", "metrics", "task", "test", "calibration", "edits", "type", "layer", "head",
        "keys", "factor", "bias", "gammas", "method", "objective", "scopes", "eval", "batch_size", "bootstrap",
        "confidence", "prefix_cache", "backend", "output", "db", "path", "period", "n_choices", "mode", "unit",
        "up", "down", "beta", "theta", "alpha", "max_heads", "sinks", "target", "keep", "description", "vocab"]
SWEEP_KEYS = ["seed", "model", "metrics", "description", "edits", "task.test", "task.calibration", "task.name",
              "task.shots", "calibration.gammas", "calibration.method", "eval.batch_size", "output.db", "name"]
scalars = (st.integers(-3, 5) | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=True, allow_infinity=True)
           | st.booleans() | st.text(max_size=12) | st.sampled_from(["", " ", "smollm2", "induction", "zero",
                                                                       "mean", "act", "accuracy", "all", "auto"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(min_size=1, max_size=6), inner, max_size=3), max_leaves=6)


def _paths(doc, prefix=()):
    """Every (container path, key) in the parsed spec."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield prefix, k
        yield from _paths(v, prefix + (k,))


@st.composite
def data_mutation(draw) -> str:
    import copy
    import tomllib

    doc = copy.deepcopy(tomllib.loads(draw(st.sampled_from(BASES))))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        if not paths:
            break
        prefix, key = draw(st.sampled_from(paths))
        parent = doc
        for p in prefix:
            parent = parent[p]
        how = draw(st.sampled_from(["drop", "value", "unknown", "empty", "numbers", "sweep"]))
        if how == "drop":
            del parent[key]
        elif how == "value":
            parent[key] = draw(values)
        elif how == "unknown" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=8))] = draw(values)
        elif how == "empty":
            parent[key] = draw(st.sampled_from([{}, [], "", [{}]]))
        elif how == "sweep":  # at most 3 x 3 runs, each checked like a spec
            keys = st.sampled_from(SWEEP_KEYS) | st.text(min_size=1, max_size=8)
            doc["sweep"] = draw(st.dictionaries(keys, st.lists(values, min_size=1, max_size=3) | values, max_size=2))
        elif how == "numbers":  # near the edges of each range: 0, negatives, huge, fractions
            parent[key] = draw(st.sampled_from([0, -1, 1, 2**31, 10**12, 0.0, -0.5, 1.5, 1e308, math.inf]))
    return to_toml(doc)


@st.composite
def text_mutation(draw) -> str:
    lines = draw(st.sampled_from(BASES)).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        how = draw(st.sampled_from(["duplicate", "delete", "swap", "garbage", "truncate"]))
        if not lines:
            lines = [draw(st.text(max_size=30))]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "delete":
            del lines[i]
        elif how == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "garbage":
            lines.insert(i, draw(st.text(max_size=30) | st.sampled_from(
                ["[task]", "[[edits]]", "[eval", "x = ", "= 1", "model = 'smollm2'", "[task.sub]", "\x00", "\ufeff"])))
        else:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""]))


# --- the property ------------------------------------------------------------------------------------------
KEYPATH = r'(?:"(?:[^"\\]|\\.)*"|[^:"])+?'  # dotted; an odd key is "quoted" (it may hold '.' or ':')
ERROR = re.compile(rf"^{re.escape(SOURCE)}: (?:sweep\.(?P<sweep>[^:]+?): )?(?P<keypath>{KEYPATH}): (?P<message>.*?)"
                   r"(?: \(line (?P<line>\d+)\))?(?: \[in the sweep run with .*\])?$", re.DOTALL)


def assert_checked(text: str) -> None:
    try:
        specs = parse_specs(text, source=SOURCE, base_dir=EXPERIMENTS)
    except SpecError as err:
        for msg in re.split(rf"\n(?={re.escape(SOURCE)}: )", str(err)):  # one line per error (a key may hold \n)
            assert_names_field(msg, text)
        return
    assert specs and all(isinstance(spec, Spec) for spec in specs)


def assert_names_field(msg: str, text: str) -> None:
    """One line of a ``SpecError``: the source, the key path, the message and the line that holds the key."""
    if msg.startswith(f"{SOURCE}: not valid TOML"):
        assert re.search(r"line \d+", msg) or "end of document" in msg, msg
        return
    if msg.startswith(f"{SOURCE}: sweep."):  # sweep keys are dotted strings: the line of the key or of [sweep]
        line = re.search(r"\(line (\d+)\)", msg)
        assert line, msg
        assert 1 <= int(line[1]) <= len(text.splitlines()), msg
        return
    m = ERROR.match(msg)
    assert m, f"not '<source>: <key path>: <message> (line N)': {msg!r}"
    path = m["keypath"] if m["sweep"] is None else "sweep." + re.sub(r"\[\d+\]$", "", m["sweep"])
    names = [json.loads(p) if p.startswith('"') else p  # calibration.gammas[1] -> calibration, gammas
             for p in re.findall(r'"(?:[^"\\]|\\.)*"|[^.\[\]"]+|\[\d+\]', path) if not p.startswith("[")]
    key, table = names[-1], names[-2] if len(names) > 1 else None
    if m["line"] is not None:  # the line it names holds that key, or the header of its table
        line = text.splitlines()[int(m["line"]) - 1]
        assert key in line or (table and table in line), (msg, line)
    elif not (table is None and m["message"].startswith("missing")):  # (written in another table: missing here)
        # no line: neither the key nor its table is written at the start of a line
        for name in filter(None, (key, table)):
            written = re.compile(rf'^\s*(?:"?{re.escape(name)}"?\s*=|\[+\s*{re.escape(name)}\s*\]+)', re.M)
            assert not written.search(text), f"no line for a written key: {msg!r}"


SETTINGS = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# What the fuzzers found, kept as fixed examples: counts that hung the check (it builds the task),
# a NaN that passed every range check, odd keys (quoted, holding '.' or '[') that got no line,
# a missing field with no line, and a swept key that turned a value into a table.
FOUND = [
    'model = "induction"\n[task]\nname = "induction"\ntest = 2147483648\n',
    'model = "induction"\n[task]\nname = "colored_objects"\ntest = 4\nshots = 10000000\n',
    'model = "induction"\n[task]\nname = "induction"\ntest = 4\n[[edits]]\ntype = "gate"\nfactor = nan\n',
    'model = "induction"\n"[" = []\n"task.test" = 4\n[task]\nname = "induction"\ntest = 4\n',
    'model = "induction"\n[task]\nname = "induction"\ntest = 4\n"a.b" = 1\n',
    'model = "act"\n[task]\nname = "induction"\ntest = 48\n[calibration]\nmethod = "act"\n',
    'model = "induction"\n[task]\nname = "induction"\ntest = 4\n[sweep]\nseed = {"x" = [0]}\n',
]


@settings(**SETTINGS)
@given(text=data_mutation())
@example(text=FOUND[0]).via("found: test = 2**31 hung")
@example(text=FOUND[1]).via("found: shots = 10**7 hung")
@example(text=FOUND[2]).via("found: nan factor accepted")
@example(text=FOUND[3]).via("found: quoted keys had no line")
@example(text=FOUND[4]).via("found: quoted keys had no line")
@example(text=FOUND[5]).via("found: a missing field had no line")
@example(text=FOUND[6]).via("found: a swept key made a table")
def test_mutated_spec_checks_or_names_field(text):
    assert_checked(text)


@settings(**SETTINGS)
@given(text=text_mutation())
def test_mutated_spec_text_checks_or_names_field(text):
    assert_checked(text)


@settings(**SETTINGS)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_garbage_is_a_spec_error(text):
    assert_checked(text)


@pytest.mark.parametrize("text,keypath", [(FOUND[0], "task.test"), (FOUND[1], "task.shots"),
                                          (FOUND[2], "edits[0].factor"), (FOUND[3], '"["')])
def test_found_bugs_are_spec_errors(text, keypath):
    with pytest.raises(SpecError, match=re.escape(keypath) + r": .*\(line \d+\)"):
        parse_specs(text, source=SOURCE)


@pytest.mark.parametrize("text", BASES[:1])
def test_the_writer_round_trips(text):
    import tomllib

    assert tomllib.loads(to_toml(tomllib.loads(text))) == tomllib.loads(text)
