"""circuits: activation, path and attribution patching, and automatic circuit discovery.

Public API (names are stable)::

    pairs = make_pairs(subject, "ioi" | "colored_objects" | "induction", n, seed)   # PromptPairs
    pairs = pairs_from_texts(subject, clean, corrupted, answers, wrong)

    # activation patching -> pandas DataFrames (columns listed; .attrs: clean, corrupted, mode, metric_name)
    patch_residual(subject, pairs, metric=, mode=, layers=, positions=)   # layer, pos, metric, score
    patch_components(subject, pairs, component="attn"|"mlp")              # layer, component, metric, score
    patch_heads(subject, pairs, metric=, mode=, positions=)               # layer, head, metric, score
    path_patch(subject, pairs, sender, receivers)                         # dict: metric, clean, corrupted, score
    edge_patching_scores(subject, pairs)                                  # sender, receiver, score, normalized
    eap_scores(subject, pairs)                                            # sender, receiver, score, normalized
    run_with_head_outputs(subject, tokens, {(layer, head): [b, pos, d_head]}) -> logits   # GQA-exact

    # discovery -> Circuit
    discover(subject, pairs, method="eap"|"acdc", ...)
    eap_circuit(subject, pairs, top_k= | top_frac=, selection="greedy"|"top", evaluate=True)
    acdc(subject, pairs, threshold=, metric="kl")
    evaluate_circuit(subject, circuit, pairs)    # full, circuit, ablated, faithfulness, normalized

    Circuit(edges, scores, task, metric, method, model, params, faithfulness, metrics)
        .nodes .heads .to_frame() .strongest_path() .save(path) Circuit.load(path)
    overlap(a, b, on="heads"|"nodes"|"edges")    # jaccard |A n B|/|A u B|, frac_of_a |A n B|/|A|

Nodes: "input", "a{layer}.h{head}", "m{layer}", "logits" (``Graph``). Modes: "denoise"
(corrupted run, clean value), "resample" (clean run, corrupted value), "mean", "zero".
Metrics: "logit_diff", "prob", "kl" at each prompt's last token.

Every pass hooks the stock transformers model at its named sites (``Subject.hooks``; a
``RunSpec`` becomes site hooks in ``lens.circuits._runs``): a head's output is its ``d_head``
slice of the output projection's input (the ``attn_z`` site), so grouped-query attention is
exact. Per-head outputs as tensors: ``lens.edits.head_outputs``.
"""

from lens.circuits._circuit import Circuit, overlap
from lens.circuits._discovery import acdc, discover, eap_circuit, eap_scores, evaluate_circuit
from lens.circuits._graph import INPUT, LOGITS, Graph, head_node, mlp_node, parse_node
from lens.circuits._metrics import METRICS, answer_prob, kl_div, logit_diff
from lens.circuits._pairs import (
    PromptPairs,
    colored_objects_pairs,
    induction_pairs,
    ioi_pairs,
    make_pairs,
    pairs_from_ids,
    pairs_from_texts,
)
from lens.circuits._patching import (
    MODES,
    edge_patching_scores,
    patch_components,
    patch_heads,
    patch_residual,
    path_patch,
    run_with_head_outputs,
)

__all__ = [
    "INPUT", "LOGITS", "METRICS", "MODES", "Circuit", "Graph", "PromptPairs", "acdc", "answer_prob",
    "colored_objects_pairs", "discover", "eap_circuit", "eap_scores", "edge_patching_scores", "evaluate_circuit",
    "head_node", "induction_pairs", "ioi_pairs", "kl_div", "logit_diff", "make_pairs", "mlp_node",
    "overlap", "pairs_from_ids", "pairs_from_texts", "parse_node", "patch_components", "patch_heads",
    "patch_residual", "path_patch", "run_with_head_outputs",
]
