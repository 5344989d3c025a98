"""Per-layer and per-head probe curves: one probe per residual layer (or head), as a DataFrame for viz."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from lens.edits import head_outputs
from lens.probes._linear import CS, FOLDS, fit_probe, token_rows
from lens.record import capture

# accuracy, control_accuracy, selectivity, train_accuracy and majority are means over the CV
# folds; the *_std columns their standard deviation over folds; c the median chosen C.
COLUMNS = ("layer", "accuracy", "accuracy_std", "control_accuracy", "selectivity", "selectivity_std",
           "train_accuracy", "majority", "c", "folds", "n_train", "n_test")


def probe_capture(capture, labels, *, layers: Sequence[int] | None = None, kind: str = "logistic",
                  folds: int = FOLDS, cs: Sequence[float] = CS, seed: int = 0, control: bool = True) -> pd.DataFrame:
    """One probe per residual layer recorded in ``capture`` (``lens.capture(..., resid_layers=...)``).

    labels: ``[batch, pos]`` per-token labels aligned with ``capture.tokens`` (< 0 = ignore).
    Returns one row per layer with ``COLUMNS`` (the residual stream *after* block ``layer``),
    scored by cross-validation grouped by sequence (``fit_probe``); ``.attrs`` holds the settings.
    """
    if not capture.resid:
        raise ValueError("the capture holds no residual streams: capture with resid_layers=[...]")
    layers = sorted(capture.resid) if layers is None else list(layers)
    missing = [l for l in layers if l not in capture.resid]
    if missing:
        raise ValueError(f"layers {missing} were not captured; captured: {sorted(capture.resid)}")
    labels = torch.as_tensor(np.asarray(labels))
    if tuple(labels.shape) != tuple(capture.tokens.shape):
        raise ValueError(f"labels must match capture.tokens {tuple(capture.tokens.shape)}, got {tuple(labels.shape)}")
    seq, pos, y = token_rows(labels, capture.lengths)
    types = capture.tokens[seq, pos].numpy()
    rows = []
    for layer in layers:
        x = capture.resid[layer][seq, pos]
        res = fit_probe(x, y, seq=seq, types=types, kind=kind, folds=folds, cs=cs, seed=seed, control=control)
        rows.append({"layer": layer, **res.as_row()})
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs.update(kind=kind, folds=folds, cs=tuple(cs), seed=seed, site="resid_post", n_tokens=len(y))
    return df


def probe_layers(subject, inputs, labels, *, layers: Sequence[int] | None = None, batch_size: int = 16,
                 **options) -> pd.DataFrame:
    """Capture the residual stream of ``inputs`` after each of ``layers`` (default all) and probe each.

    inputs: texts or token ids as ``lens.capture`` takes them; labels ``[batch, pos]`` aligned
    with the captured tokens. Layer ``-1`` is the embeddings (the residual before block 0),
    the baseline a curve starts from. Options as ``probe_capture``.
    """
    layers = list(range(subject.n_layers)) if layers is None else list(layers)
    for layer in layers:
        if not -1 <= layer < subject.n_layers:
            raise ValueError(f"layer {layer} out of range -1..{subject.n_layers - 1}")
    cap = capture(subject, inputs, stats=["sink_mass"], resid_layers=[l for l in layers if l >= 0],
                  value_norm=False, resid_norm=False, massive=False, batch_size=batch_size, progress=False)
    if -1 in layers:
        cap.resid[-1] = embeddings(subject, cap.tokens, cap.lengths)
    return probe_capture(cap, labels, layers=layers, **options)


def embeddings(subject, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The residual stream before block 0 ``[batch, pos, d_model]`` (padding zeroed)."""
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    seen: list[torch.Tensor] = []
    with torch.no_grad(), subject.hooks({("resid_pre", 0): lambda x, call: seen.append(x.detach())}):
        subject.model(input_ids=tokens.to(subject.device), attention_mask=real.long().to(subject.device),
                      use_cache=False)
    return seen[0].float().cpu() * real[..., None]


def probe_heads(subject, tokens: torch.Tensor, labels, *, lengths: torch.Tensor | None = None,
                heads: Sequence[tuple[int, int]] | None = None, kind: str = "logistic", folds: int = FOLDS,
                cs: Sequence[float] = CS, seed: int = 0, control: bool = True) -> pd.DataFrame:
    """One probe per head on its output (its ``d_head`` slice of the o_proj input; exact under GQA).

    tokens: ``[batch, pos]`` right-padded ids; labels ``[batch, pos]`` (< 0 = ignore).
    Returns ``layer, head`` and the ``COLUMNS`` scores.

    Why ten parameters: the inputs and heads, then ``fit_probe``'s five cross-validation settings,
    passed through by keyword.
    """
    tokens = torch.as_tensor(tokens)
    b, t = tokens.shape
    lengths = torch.full((b,), t, dtype=torch.long) if lengths is None else torch.as_tensor(lengths)
    heads = [(l, h) for l in subject.attn_layers for h in range(subject.n_heads)] if heads is None else list(heads)
    subject.check_heads(heads)
    z, _ = head_outputs(subject, [tokens[i, :n].tolist() for i, n in enumerate(lengths.tolist())],
                        sorted({l for l, _ in heads}))  # {layer: [b, pos, head, d_v]}
    seq, pos, y = token_rows(labels, lengths)
    types = tokens[seq, pos].numpy()
    rows = []
    for layer, head in heads:
        x = z[layer][seq, pos, head]
        res = fit_probe(x, y, seq=seq, types=types, kind=kind, folds=folds, cs=cs, seed=seed, control=control)
        rows.append({"layer": layer, "head": head, **res.as_row()})
    df = pd.DataFrame(rows, columns=["layer", "head", *COLUMNS[1:]])
    df.attrs.update(kind=kind, folds=folds, cs=tuple(cs), seed=seed, site="head_output", n_tokens=len(y))
    return df
