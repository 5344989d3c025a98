"""``[sweep]`` tables: one spec crossed into runs, each checked like any spec.

    [sweep]
    seed = [0, 1, 2]                              # a dotted spec path = the list of values it takes
    "task.shots" = [0, 2]                         # quoted or bare (task.shots = [0, 2])
    "calibration.gammas" = [[0.5], [0.5, 2.0]]
    edits = [[], [{ type = "ablate", layer = 1 }]]   # edit lists; [] = no edits (a baseline run)

The runs are the cross product of the lists, in the order written (the last key varies
fastest). Each is the spec without ``[sweep]``, with those values set, then checked by
the same checker as any spec; a bad value fails naming its sweep key, its index and the
line of that key (``sweep.seed[1]: seed: must be >= 0, got -1 (line 21)``).
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from lens.experiments._spec import Spec, SpecError, _Check, _check_spec, _show, _toml, parse_spec, sweep_line

# What a sweep may set: the spec's own keys, except the name (one sweep, one name) and the
# output (one database for the whole sweep).
SWEEPABLE = ("model", "seed", "metrics", "task", "calibration", "edits", "eval", "description")


def _flatten(table: dict, prefix: str = "") -> dict:
    """``{"task": {"shots": [..]}}`` (written ``task.shots = [..]``) -> ``{"task.shots": [..]}``."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def sweep_axes(text: str, *, source: str = "<spec>") -> dict[str, list]:
    """The spec's ``[sweep]`` as ``{dotted key: values}`` (empty without one), its shape checked."""
    raw = _toml(text, source)
    if "sweep" not in raw:
        return {}
    c = _Check(text, source)
    axes = _flatten(c.table(raw["sweep"], "sweep"))
    if not axes:
        c.fail("sweep", "empty: give one or more keys, each with a list of values")

    def bad(key, message):
        line = sweep_line(text, key)
        raise SpecError(f"{source}: sweep.{key}: {message}{f' (line {line})' if line else ''}")

    for key, values in axes.items():
        root = key.split(".", 1)[0]
        if root not in SWEEPABLE:
            bad(key, f"cannot be swept; sweep keys start with one of {', '.join(SWEEPABLE)}")
        if not isinstance(values, list) or not values:
            bad(key, f"expected a non-empty list of values (one per run), got {_show(values)}")
        if key == "edits" and not all(isinstance(v, list) for v in values):
            bad(key, "expected a list of edit lists, e.g. [[{type = \"ablate\", layer = 1}], []]")
    return axes


def _set(raw: dict, key: str, value) -> None:
    *tables, last = key.split(".")
    node = raw
    for t in tables:
        node = node.setdefault(t, {})
        if not isinstance(node, dict):
            raise SpecError(f"sweep.{key}: {t} is not a table in the spec")
    if key == "edits" and value == []:
        node.pop(last, None)  # no edits: a baseline run
    else:
        node[last] = copy.deepcopy(value)


def parse_specs(text: str, *, source: str = "<spec>", base_dir: Path | None = None) -> list[Spec]:
    """Every run of a spec: its ``[sweep]`` crossed into runs, each checked; one run without a sweep."""
    axes = sweep_axes(text, source=source)
    if not axes:
        return [parse_spec(text, source=source, base_dir=base_dir)]
    base = _toml(text, source)
    del base["sweep"]
    keys = list(axes)
    runs = []
    for picks in itertools.product(*(list(enumerate(axes[k])) for k in keys)):
        raw = copy.deepcopy(base)
        swept = {}
        for key, (i, value) in zip(keys, picks):
            try:
                _set(raw, key, value)
            except SpecError as err:
                line = sweep_line(text, key)
                raise SpecError(f"{source}: {err}{f' (line {line})' if line else ''}") from None
            swept[key] = (i, value)
        spec = _check_spec(raw, _Check(text, source, swept), source, base_dir)
        spec.sweep = {k: v for k, (_, v) in swept.items()}
        runs.append(spec)
    return runs


def load_specs(path: str | Path) -> list[Spec]:
    """Every run of a spec file (its ``[sweep]`` crossed; one run without one), each checked."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found; give the path of a .toml spec (see docs/experiments/*.toml)")
    specs = parse_specs(path.read_text(encoding="utf-8"), source=str(path), base_dir=path.parent)
    for spec in specs:
        spec.path = str(path)
    return specs
