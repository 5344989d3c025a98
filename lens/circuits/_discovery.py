"""Circuit discovery: attribution patching over edges (EAP), greedy ACDC-style pruning, evaluation.

EAP (Syed et al. 2023): the effect of ablating edge ``s -> r`` is estimated to first order
as ``(ref_s - clean_s) . d metric / d input_r``, summed over positions; one clean forward and
backward pass with every receiver given its own input (a zero leaf added to it) scores
every edge at once. ACDC (Conmy et al. 2023): visit receivers from the logits backwards and
their senders in reverse order; ablate each edge for good when that changes the metric by
less than ``threshold`` (KL: increase in nats; other metrics: |change| / |clean - corrupted|).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from lens.circuits._circuit import Circuit
from lens.circuits._graph import INPUT, LOGITS, Graph
from lens.circuits._metrics import get_metric
from lens.circuits._pairs import PromptPairs
from lens.circuits._patching import _Setup, reference_outputs, removed_matrix, run_removed, valid_edges
from lens.circuits._runs import RunSpec, last_logits, run


class _Batches:
    """The pairs in chunks, each with its clean/corrupted setup and reference sender outputs."""

    def __init__(self, subject, pairs: PromptPairs, metric: str, ablation: str, batch_size: int):
        self.subject, self.graph = subject, Graph.of(subject)
        self.items = []
        for chunk in pairs.chunks(batch_size):
            setup = _Setup(subject, chunk, metric, record=(), senders=True)
            ref, mask = reference_outputs(subject, setup, ablation)
            self.items.append((setup, ref, mask, len(chunk)))
        self.n = len(pairs)
        self.m_clean = sum(s.m_clean * k for s, _, _, k in self.items) / self.n
        self.m_corr = sum(s.m_corr * k for s, _, _, k in self.items) / self.n

    def value(self, removed: torch.Tensor) -> float:
        """Mean metric over all pairs with the ``removed`` edges ablated."""
        return sum(run_removed(self.subject, s, removed, ref, mask, self.graph) * k
                   for s, ref, mask, k in self.items) / self.n


def eap_scores(subject, pairs: PromptPairs, *, metric: str = "logit_diff", ablation: str = "resample",
               batch_size: int = 16, ig_steps: int = 0) -> pd.DataFrame:
    """First-order estimate of each edge's ablation effect on the mean metric (EAP).

    score(s -> r) = (a_s(ablated) - a_s(clean)) . dM/d(input of r), summed over positions.
    ``ig_steps = 0``: the gradient at the clean run (plain EAP). ``ig_steps = k > 0``: EAP-IG
    (Hanna et al. 2024), the gradient averaged over k runs whose token embeddings are
    interpolated between the corrupted and the clean prompt (midpoints alpha = (i + 1/2) / k);
    it needs clean and corrupted prompts of equal length.

    Returns one row per edge: ``sender, receiver, score`` (metric units; comparable to
    ``edge_patching_scores``) and ``normalized`` (score / (clean - corrupted)).
    """
    if ig_steps < 0:
        raise ValueError(f"ig_steps must be >= 0, got {ig_steps}")
    if ig_steps and not (pairs.clean.shape == pairs.corrupted.shape
                         and torch.equal(pairs.clean_lengths, pairs.corrupted_lengths)):
        raise ValueError("ig_steps > 0 interpolates token embeddings: clean and corrupted prompts must have equal lengths")
    graph = Graph.of(subject)
    valid = valid_edges(graph)
    fn = get_metric(metric)
    names = list(graph.receivers)
    total = torch.zeros(len(graph.receivers), len(graph.senders), dtype=torch.float64)
    b = _Batches(subject, pairs, metric, ablation, batch_size)
    alphas = [None] if ig_steps == 0 else [(i + 0.5) / ig_steps for i in range(ig_steps)]
    for setup, ref, mask, k in b.items:
        p = setup.pairs
        g = 0.0
        for alpha in alphas:
            with torch.enable_grad(), _embeddings_mixed(subject, p.corrupted, alpha):
                logits, st = run(subject, p.clean, p.clean_lengths, RunSpec(grad_receivers=True), graph=graph,
                                 grad=True)
                m = fn(last_logits(logits, p.clean_lengths).float(), setup.answers, setup.clean_last).mean()
                grads = torch.autograd.grad(m, [st.leaves[r] for r in names], allow_unused=True)
            g = g + torch.stack([torch.zeros_like(ref[0]) if x is None else x for x in grads]) / len(alphas)
        clean = torch.stack([x.detach() for x in setup.clean.senders])  # sender outputs of the clean run
        diff = (ref - clean) * mask[None, ..., None].to(clean.dtype)  # [S, b, t, d]
        total += torch.einsum("snd,rnd->rs", diff.flatten(1, 2), g.flatten(1, 2)).double() * k
    total /= b.n
    rows = [(s, r, float(total[graph.receiver_index[r], graph.sender_index[s]])) for s, r in graph.edges]
    df = pd.DataFrame(rows, columns=["sender", "receiver", "score"])
    df["normalized"] = df["score"] / (b.m_clean - b.m_corr)
    df.attrs.update(metric_name=metric, ablation=ablation, clean=b.m_clean, corrupted=b.m_corr, ig_steps=ig_steps)
    assert bool(valid.any())
    return df


@contextlib.contextmanager
def _embeddings_mixed(subject, corrupted: torch.Tensor, alpha: float | None):
    """Token embeddings of the next runs = corrupted + alpha (clean - corrupted); no-op for None."""
    if alpha is None:
        yield
        return
    with torch.no_grad():
        other = subject.model.get_input_embeddings()(corrupted.to(subject.device))
    with subject.hooks({"embed_out": lambda out, call: other + alpha * (out - other)}):
        yield


def _connected(graph: Graph, edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The edges on some input -> logits path."""
    fwd, bwd = {INPUT}, {LOGITS}
    by_recv = sorted(edges, key=lambda e: graph.receivers.index(e[1]))
    for s, r in by_recv:
        if s in fwd:
            fwd.add(r)
    for s, r in reversed(by_recv):
        if r in bwd:
            bwd.add(s)
    return {(s, r) for s, r in edges if s in fwd and r in bwd}


def evaluate_circuit(subject, circuit: Circuit | Sequence[tuple[str, str]], pairs: PromptPairs, *,
                     metric: str = "logit_diff", ablation: str = "resample", batch_size: int = 32,
                     _batches: _Batches | None = None) -> dict:
    """The circuit run alone: every edge not in the circuit ablated.

    Returns ``{"full", "circuit", "ablated", "faithfulness": circuit / full,
    "normalized": (circuit - ablated) / (full - ablated), "n_edges"}`` (``ablated``: every edge ablated).
    """
    edges = circuit.edges if isinstance(circuit, Circuit) else list(circuit)
    b = _batches or _Batches(subject, pairs, metric, ablation, batch_size)
    valid = valid_edges(b.graph)
    keep = removed_matrix(b.graph, edges)
    m_circ = b.value(valid & ~keep)
    m_none = b.value(valid)
    full = b.m_clean
    return {"full": full, "circuit": m_circ, "ablated": m_none,
            "faithfulness": m_circ / full if full else float("nan"),
            "normalized": (m_circ - m_none) / (full - m_none) if full != m_none else float("nan"),
            "n_edges": len(edges)}


def greedy_edges(graph: Graph, scores: pd.DataFrame, k: int) -> set[tuple[str, str]]:
    """Grow a circuit from the logits backwards: repeatedly add the strongest |score| edge into a node
    already in it, until ``k`` edges (EAP-IG's "greedy" selection). Every node reaches the logits."""
    by_recv: dict[str, list[tuple[float, str]]] = {}
    for s, r, v in zip(scores["sender"], scores["receiver"], scores["score"]):
        by_recv.setdefault(r, []).append((-abs(float(v)), s))
    heap: list[tuple[float, str, str]] = []
    for neg, s in by_recv.get(LOGITS, []):
        heapq.heappush(heap, (neg, s, LOGITS))
    chosen: set[tuple[str, str]] = set()
    inside = {LOGITS}
    while heap and len(chosen) < k:
        _, s, r = heapq.heappop(heap)
        if (s, r) in chosen:
            continue
        chosen.add((s, r))
        if s not in inside and s != INPUT:
            inside.add(s)
            for neg, s2 in by_recv.get(s, []):
                heapq.heappush(heap, (neg, s2, s))
    return chosen


def eap_circuit(subject, pairs: PromptPairs, *, top_k: int | None = None, top_frac: float | None = None,
                metric: str = "logit_diff", ablation: str = "resample", batch_size: int = 16,
                selection: str = "greedy", scores: pd.DataFrame | None = None, evaluate: bool = True,
                ig_steps: int = 0) -> Circuit:
    """A circuit of ``top_k`` edges (or ``top_frac`` of all edges) chosen by |EAP score|.

    ig_steps: 0 for plain EAP scores, k > 0 for EAP-IG (see ``eap_scores``).
    selection: ``"greedy"`` grows it from the logits backwards (every edge leads to the logits);
    ``"top"`` takes the k strongest edges and keeps those on an input -> logits path (can be
    empty on a large graph). evaluate: compute faithfulness (two more patched passes).

    Why eleven parameters: the size (top_k or top_frac), the selection and ``evaluate`` are this
    function's; the rest are ``eap_scores``' options, passed through by keyword (or skipped with ``scores``).
    """
    if (top_k is None) == (top_frac is None):
        raise ValueError("give exactly one of top_k and top_frac")
    if selection not in ("greedy", "top"):
        raise ValueError(f"selection must be 'greedy' or 'top', got {selection!r}")
    if scores is None:
        scores = eap_scores(subject, pairs, metric=metric, ablation=ablation, batch_size=batch_size, ig_steps=ig_steps)
    k = top_k if top_k is not None else max(1, round(top_frac * len(scores)))
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    graph = Graph.of(subject)
    if selection == "greedy":
        kept = greedy_edges(graph, scores, k)
    else:
        top = scores.reindex(scores["score"].abs().sort_values(ascending=False).index).head(k)
        kept = _connected(graph, {(s, r) for s, r in zip(top["sender"], top["receiver"])})
    score_of = {(s, r): float(v) for s, r, v in zip(scores["sender"], scores["receiver"], scores["score"])}
    edges = [e for e in graph.edges if e in kept]
    circuit = Circuit(edges, {e: score_of[e] for e in edges}, task=pairs.task, metric=metric, method="eap",
                      model=subject.name, params={"top_k": k, "selection": selection, "ablation": ablation,
                                                  "n_pairs": len(pairs), "ig_steps": scores.attrs.get("ig_steps", 0)})
    if evaluate:
        circuit.metrics = evaluate_circuit(subject, circuit, pairs, metric="logit_diff" if metric == "kl" else metric,
                                           ablation=ablation, batch_size=batch_size)
        circuit.faithfulness = circuit.metrics["faithfulness"]
    return circuit


def acdc(subject, pairs: PromptPairs, *, threshold: float = 0.05, metric: str = "kl", ablation: str = "resample",
         batch_size: int = 32, progress: bool = False) -> Circuit:
    """Greedy ACDC-style pruning over every edge (one forward pass per edge: small models).

    An edge is ablated for good when ablating it, on top of the edges already ablated,
    changes the metric by less than ``threshold``. The kept edges' scores are that change.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    b = _Batches(subject, pairs, metric, ablation, batch_size)
    graph = b.graph
    valid = valid_edges(graph)
    removed = torch.zeros_like(valid)
    gap = abs(b.m_clean - b.m_corr) or 1.0
    current = b.m_clean
    scores: dict[tuple[str, str], float] = {}
    order = list(reversed(graph.receivers))
    bar = tqdm(total=int(valid.sum()), desc="acdc", disable=not progress, leave=False)
    for r in order:
        ri = graph.receiver_index[r]
        senders = [s for s in reversed(graph.senders) if valid[ri, graph.sender_index[s]]]
        # A receiver whose output reaches nothing kept is irrelevant: its inputs go without testing.
        if r != LOGITS and not _feeds(graph, r, valid & ~removed):
            for s in senders:
                removed[ri, graph.sender_index[s]] = True
            bar.update(len(senders))
            continue
        for s in senders:
            si = graph.sender_index[s]
            removed[ri, si] = True
            value = b.value(removed)
            change = (value - current) if metric == "kl" else abs(value - current) / gap
            if change < threshold:
                current = value
            else:
                removed[ri, si] = False
                scores[(s, r)] = float(change)
            bar.update(1)
    bar.close()
    kept = {(s, r) for s, r in graph.edges if not removed[graph.receiver_index[r], graph.sender_index[s]]}
    kept = _connected(graph, kept)
    edges = [e for e in graph.edges if e in kept]
    circuit = Circuit(edges, {e: scores.get(e, float("nan")) for e in edges}, task=pairs.task, metric=metric,
                      method="acdc", model=subject.name,
                      params={"threshold": threshold, "ablation": ablation, "n_pairs": len(pairs)})
    eval_metric = "logit_diff" if metric == "kl" else metric
    bb = b if eval_metric == metric else None
    circuit.metrics = evaluate_circuit(subject, circuit, pairs, metric=eval_metric, ablation=ablation,
                                       batch_size=batch_size, _batches=bb)
    circuit.faithfulness = circuit.metrics["faithfulness"]
    return circuit


def _feeds(graph: Graph, node: str, kept: torch.Tensor) -> bool:
    """True when ``node`` sends along some kept edge."""
    if node not in graph.sender_index:
        return False
    return bool(kept[:, graph.sender_index[node]].any())


def discover(subject, pairs: PromptPairs, *, method: str = "eap", **options) -> Circuit:
    """A circuit by ``method``: ``"eap"`` (top-k edges by attribution, see ``eap_circuit``) or ``"acdc"``."""
    if method == "eap":
        if "top_k" not in options and "top_frac" not in options:
            options["top_frac"] = 0.02
        return eap_circuit(subject, pairs, **options)
    if method == "acdc":
        return acdc(subject, pairs, **options)
    raise ValueError(f"unknown discovery method {method!r}; known: eap, acdc")
