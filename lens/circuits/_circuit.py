"""The Circuit: nodes, edges and their scores, how it was found, and how faithful it is; overlap.

Saved as plain JSON (no pickle). Node names as in ``lens.circuits._graph``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lens.circuits._graph import INPUT, LOGITS, parse_node

FORMAT = "lens-circuit/1"


@dataclass
class Circuit:
    """A circuit found for ``task`` with ``metric`` by ``method`` on ``model``.

    edges: (sender, receiver) pairs; scores: edge -> score (method's units: the metric change
    when the edge is ablated, for EAP its first-order estimate); nodes: every node on an
    edge. faithfulness: circuit-only metric / full-model metric (``evaluate_circuit``), and
    ``metrics`` the numbers behind it.
    """

    edges: list[tuple[str, str]]
    scores: dict[tuple[str, str], float] = field(default_factory=dict)
    task: str = ""
    metric: str = "logit_diff"
    method: str = ""
    model: str = ""
    params: dict = field(default_factory=dict)
    faithfulness: float | None = None
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.edges = [tuple(e) for e in self.edges]
        for s, r in self.edges:
            parse_node(s), parse_node(r)

    @property
    def nodes(self) -> list[str]:
        seen: dict[str, None] = {}
        for s, r in self.edges:
            seen.setdefault(s), seen.setdefault(r)
        return list(seen)

    @property
    def heads(self) -> list[tuple[int, int]]:
        """The attention heads in the circuit as (layer, head), sorted."""
        out = set()
        for n in self.nodes:
            kind, layer, head = parse_node(n)
            if kind == "head":
                out.add((layer, head))
        return sorted(out)

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        f = "?" if self.faithfulness is None else f"{self.faithfulness:.3f}"
        return (f"Circuit({self.task or '?'} / {self.metric}, {self.method}: {len(self.nodes)} nodes, "
                f"{len(self.edges)} edges, faithfulness {f})")

    def to_frame(self) -> pd.DataFrame:
        """One row per edge: ``sender, receiver, score``, strongest |score| first."""
        df = pd.DataFrame([(s, r, self.scores.get((s, r), float("nan"))) for s, r in self.edges],
                          columns=["sender", "receiver", "score"])
        return df.reindex(df["score"].abs().sort_values(ascending=False).index).reset_index(drop=True)

    def strongest_path(self) -> tuple[list[str], float]:
        """The input -> logits path whose weakest edge (by |score|) is strongest, and that edge's |score|.

        Bottleneck path by dynamic programming over the nodes in computation order.
        """
        order = sorted(self.nodes, key=_order_key)
        best: dict[str, tuple[float, list[str]]] = {INPUT: (float("inf"), [INPUT])}
        incoming: dict[str, list[str]] = {}
        for s, r in self.edges:
            incoming.setdefault(r, []).append(s)
        for node in order:
            for s in incoming.get(node, []):
                if s not in best:
                    continue
                w = min(best[s][0], abs(self.scores.get((s, node), 0.0)))
                if node not in best or w > best[node][0]:
                    best[node] = (w, best[s][1] + [node])
        if LOGITS not in best:
            return [], 0.0
        return best[LOGITS][1], best[LOGITS][0]

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "task": self.task, "metric": self.metric, "method": self.method, "model": self.model,
            "params": self.params, "faithfulness": self.faithfulness, "metrics": self.metrics,
            "nodes": self.nodes,
            "edges": [[s, r, self.scores.get((s, r))] for s, r in self.edges],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Circuit:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a saved circuit (format {d.get('format')!r}, expected {FORMAT!r})")
        edges = [(s, r) for s, r, _ in d["edges"]]
        scores = {(s, r): float(v) for s, r, v in d["edges"] if v is not None}
        return cls(edges, scores, d["task"], d["metric"], d["method"], d["model"], d["params"], d["faithfulness"],
                   d["metrics"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit written by ``save``; a file that is not one fails naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved circuit there; pass a file written by Circuit.save")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            why = f"no {err} field" if isinstance(err, KeyError) else str(err).removeprefix("not a saved circuit ")
            why = why.strip("()") or type(err).__name__
            raise ValueError(f"{path} is not a saved circuit ({why}); "
                             "pass a file written by Circuit.save, or discover the circuit again") from None


def _order_key(name: str) -> tuple:
    kind, layer, head = parse_node(name)
    if kind == INPUT:
        return (-1, 0, 0)
    if kind == LOGITS:
        return (10**9, 0, 0)
    return (layer, 0 if kind == "head" else 1, head or 0)


def overlap(a: Circuit, b: Circuit, *, on: str = "heads") -> dict:
    """Overlap of two circuits' heads (``on="heads"``), nodes or edges.

    Returns ``{"intersection", "union", "n_a", "n_b", "jaccard": |A n B| / |A u B|,
    "frac_of_a": |A n B| / |A|, "shared": sorted shared items}``.
    """
    if on == "heads":
        sa, sb = set(a.heads), set(b.heads)
    elif on == "nodes":
        sa, sb = set(a.nodes) - {INPUT, LOGITS}, set(b.nodes) - {INPUT, LOGITS}
    elif on == "edges":
        sa, sb = set(a.edges), set(b.edges)
    else:
        raise ValueError(f"overlap on 'heads', 'nodes' or 'edges', got {on!r}")
    inter, union = sa & sb, sa | sb
    return {"on": on, "intersection": len(inter), "union": len(union), "n_a": len(sa), "n_b": len(sb),
            "jaccard": len(inter) / len(union) if union else float("nan"),
            "frac_of_a": len(inter) / len(sa) if sa else float("nan"), "shared": sorted(inter)}
