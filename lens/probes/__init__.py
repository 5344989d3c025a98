"""probes: linear and attentive probes on residual streams and head outputs, with control tasks.

Public API (names are stable)::

    probe_layers(subject, inputs, labels, layers=None)   -> DataFrame, one row per layer (-1 = embeddings)
    probe_capture(capture, labels, layers=None)          -> same, from lens.capture(..., resid_layers=[...])
    probe_heads(subject, tokens, labels)                  -> DataFrame, one row per (layer, head)
        columns: layer, [head,] accuracy, accuracy_std, control_accuracy, selectivity, selectivity_std,
                 train_accuracy, majority, c, folds, n_train, n_test   (.attrs: kind, folds, cs, seed, site, n_tokens)
    fit_probe(x [n, d], y [n], seq=, types=, kind="logistic"|"ridge", folds=FOLDS, cs=CS) -> ProbeResult (per fold)
    control_labels(types, y, seed)                        # Hewitt & Liang control task
    fit_attentive_probe(x [n, pos, d], mask [n, pos], y [n]) -> AttentiveResult (accuracy, test_weights)
    AttentiveProbe(d_model, n_classes)                    # torch module: learned query over positions
    embeddings(subject, tokens, lengths)                  # residual before block 0 [batch, pos, d_model]
    quotation_dataset(subject, n, seed) -> tokens, lengths, labels, texts   # "token is inside quotes"

Labels are ``[batch, pos]`` integer arrays aligned with the tokens (< 0 = ignore that token).
Linear probes are scored by cross-validation grouped by sequence (GroupKFold; C chosen by an
inner grouped CV), as the mean and standard deviation over folds; the baseline ``majority`` is
a most-frequent-class DummyClassifier on the same folds. Selectivity = accuracy - control
accuracy, where the control task gives each token type a random label from the real labels'
distribution.
"""

from lens.probes._attentive import AttentiveProbe, AttentiveResult, fit_attentive_probe
from lens.probes._curves import COLUMNS, embeddings, probe_capture, probe_heads, probe_layers
from lens.probes._datasets import quotation_dataset, quotation_texts
from lens.probes._linear import CS, FOLDS, ProbeResult, control_labels, fit_probe, split_by_sequence, token_rows

__all__ = [
    "COLUMNS", "CS", "FOLDS", "AttentiveProbe", "AttentiveResult", "ProbeResult", "control_labels", "embeddings", "fit_attentive_probe",
    "fit_probe", "probe_capture", "probe_heads", "probe_layers", "quotation_dataset", "quotation_texts",
    "split_by_sequence", "token_rows",
]
