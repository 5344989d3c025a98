"""The edits a spec names, built on the loaded model (mean ablation needs it), and its targets checked."""

from __future__ import annotations

from lens.edits import (AblateHead, CalibrateSinks, Edit, GateHead, KeyBias, MoveToBOS, RedistributeAttention,
                        ScaleAttention, mean_ablation)
from lens.experiments._spec import Spec, spec_error

__all__ = ["build_edits", "check_targets"]


def _heads_of(table: dict, subject) -> list[tuple[int, int]]:
    sel = lambda v, n: list(range(n)) if v is None else [v] if isinstance(v, int) else list(v)  # noqa: E731
    return [(l, h) for l in sel(table.get("layer"), subject.n_layers) for h in sel(table.get("head"), subject.n_heads)]


def check_targets(spec: Spec, subject) -> None:
    """Layers and heads named in the spec exist in the loaded model (named by key path if not)."""
    def check(values, n, keypath, what):
        items = [values] if isinstance(values, int) else list(values or [])
        for i, v in enumerate(items):
            if not 0 <= v < n:
                kp = keypath if isinstance(values, int) else f"{keypath}[{i}]"
                raise spec_error(spec, kp, f"{what} {v} does not exist in {subject.name} ({what}s 0..{n - 1})")

    for i, e in enumerate(spec.edits):
        check(e.get("layer"), subject.n_layers, f"edits[{i}].layer", "layer")
        check(e.get("head"), subject.n_heads, f"edits[{i}].head", "head")
    if spec.calibration:
        check(spec.calibration.get("layers"), subject.n_layers, "calibration.layers", "layer")
        check(spec.calibration.get("heads"), subject.n_heads, "calibration.heads", "head")


def build_edits(spec: Spec, subject, reference_prompts) -> tuple[Edit, ...]:
    """The spec's ``[[edits]]`` as edit objects (mean ablation averages over ``reference_prompts``)."""
    out: list[Edit] = []
    for e in spec.edits:
        kind, where = e["type"], {"layer": e.get("layer"), "head": e.get("head")}
        if kind == "scale_attention":
            out.append(ScaleAttention(**where, keys=e["keys"], factor=e["factor"]))
        elif kind == "key_bias":
            out.append(KeyBias(**where, keys=e["keys"], bias=e["bias"]))
        elif kind == "move_to_bos":
            out.append(MoveToBOS(**where))
        elif kind == "gate":
            out.append(GateHead(**where, factor=e["factor"]))
        elif kind == "ablate":
            if e["mode"] == "mean":
                out.extend(mean_ablation(subject, _heads_of(e, subject), list(reference_prompts)))
            else:
                out.append(AblateHead(**where))
        elif kind == "act":
            out.append(CalibrateSinks(**where, beta=e["beta"], theta=e["theta"], alpha=e["alpha"],
                                      renormalise=e["renormalise"]))
        elif kind == "var":
            out.append(RedistributeAttention(**where, sinks=e["sinks"], target=e["target"], keep=e["keep"],
                                             min_target=e["min_target"], max_sink_share=e["max_sink_share"]))
        else:  # the spec checker knows every type; this is a programming error
            raise AssertionError(kind)
    return tuple(out)
