"""What users pass in, checked once where it enters: texts and token ids -> rows of ints.

Every entry point that takes inputs (``lens.capture``, ``lens.experiments._model_checks.losses``,
``head_outputs``, ``Subject.to_str_tokens``) goes through here, so a bad id fails with the
same message everywhere, naming the input, the limit and the fix, before the model runs
(an out-of-range id would otherwise reach the embedding as torch's bare
``IndexError: index out of range in self``). The README's "Bad inputs" table lists them.
"""

from __future__ import annotations

import numpy as np
import torch

IDS_SHAPE = "token ids are [batch, pos] or [pos]"


def n_vocab(subject) -> int:
    """Rows of the input embedding: the ids the model can take (0..n_vocab-1)."""
    return int(subject.model.get_input_embeddings().weight.shape[0])


def id_rows(ids, *, name: str, vocab: int) -> list[list[int]]:
    """Token ids (a tensor, or a list of rows of ints) -> rows of ints in 0..vocab-1, or a clear error."""
    if isinstance(ids, torch.Tensor):
        t = ids
    else:
        rows = list(ids)
        if rows and not any(isinstance(r, (list, tuple, np.ndarray, torch.Tensor)) for r in rows):
            rows = [rows]  # one row of ids
        t = None
    if t is not None:
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2:
            fix = " (for [batch, 1, pos] use ids.squeeze(1))" if t.ndim == 3 and t.shape[1] == 1 else ""
            raise ValueError(f"{IDS_SHAPE}; got a {t.ndim}-D tensor of shape {tuple(t.shape)}: "
                             f"pass one batch of rows{fix}")
        _check_dtype(t.dtype, "the tensor")
        if t.shape[0] == 0:
            raise ValueError(f"no inputs: the token-id tensor {tuple(t.shape)} has an empty batch; "
                             "pass at least one row")
        rows_t = list(t)
    else:
        if not rows:
            raise ValueError("no inputs: the list of token-id rows is empty; pass at least one row")
        rows_t = []
        for n, row in enumerate(rows):
            try:
                r = torch.as_tensor(row) if not isinstance(row, torch.Tensor) else row
            except (TypeError, ValueError) as err:
                raise ValueError(f"input {n} is not a row of token ids ({err}); {IDS_SHAPE}, as ints") from None
            if r.numel() == 0:
                raise ValueError(f"input {n} has no tokens: every row needs at least one id (drop the empty row)")
            if r.ndim != 1:
                raise ValueError(f"input {n} is {r.ndim}-D (shape {tuple(r.shape)}): {IDS_SHAPE}; "
                                 "pass a list of rows of ints, not a deeper nesting")
            _check_dtype(r.dtype, f"input {n}")
            rows_t.append(r)
    out = []
    for n, r in enumerate(rows_t):
        if r.numel() == 0:
            raise ValueError(f"input {n} has no tokens: every row needs at least one id (drop the empty row)")
        bad = (r < 0) | (r >= vocab)
        if bool(bad.any()):
            pos = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"token id {int(r[pos])} (input {n}, position {pos}) is outside {name}'s vocabulary: valid ids are "
                f"0..{vocab - 1}; encode text with this model's tokenizer (or pass the text itself), and mark "
                "padding with lengths or a shorter row, not with -1")
        out.append(r.tolist())
    return out


def _check_dtype(dtype: torch.dtype, what: str) -> None:
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"token ids must be integers; {what} holds {dtype}: cast with .long() "
                         "(after checking the values are whole token ids)")


def normalise_inputs(subject, inputs, *, allow_beyond_context: bool = False) -> list[list[int]]:
    """Texts or token ids -> rows of ids, each in the vocabulary, non-empty, and within ``n_ctx``."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, torch.Tensor):
        inputs = list(inputs)
        if not inputs:
            raise ValueError("nothing to capture: inputs is empty; pass a text, a list of texts, or token ids")
    if not isinstance(inputs, torch.Tensor) and all(isinstance(x, str) for x in inputs):
        rows = []
        for n, text in enumerate(inputs):
            if not text.strip():
                raise ValueError(f"empty text (input {n}): nothing to capture; drop it or give some text")
            rows.append(subject.tokenizer(text, add_special_tokens=True)["input_ids"])
    elif not isinstance(inputs, torch.Tensor) and any(isinstance(x, str) for x in inputs):
        raise ValueError("inputs mix texts and token ids; pass a list of strings or a list of id rows, not both")
    else:
        rows = id_rows(inputs, name=subject.name, vocab=n_vocab(subject))
    for n, row in enumerate(rows):
        if not row:
            raise ValueError(f"input {n} has no tokens: every row needs at least one id (drop the empty row)")
        if len(row) > subject.n_ctx and not allow_beyond_context:
            raise ValueError(f"input {n} has {len(row)} tokens; {subject.name} handles at most {subject.n_ctx} "
                             "(shorten or split the input; lens.capture takes allow_beyond_context=True to try anyway)")
    return rows
