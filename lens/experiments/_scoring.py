"""Scoring examples: one forward pass per prompt, answer choices compared at the last position.

Every choice is represented by its first token; a prompt's prediction is the choice whose
first token has the largest logit after the prompt. Prompts run in batches (sorted by
length, right-padded) with the edits applied through ``Subject.edited``; the unedited
baseline runs through the same routed path, so a difference is the edits' doing.

Prefix cache: when every prompt starts with the same tokens (few-shot demonstrations) and
the edits are all attention-function edits (key biases, gates), the shared prefix runs
once per call and each batch continues from its keys and values. This is exact: those
edits act per (head, key) and do not depend on which queries are in the pass. Row edits
(ACT, VAR: they read whole columns of the pattern) and residual edits (positions) turn it
off.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lens.edits import HOOK_EDITS, Edit
from lens.experiments._tasks import Example

#: Per-example output columns (besides idx, pred, answer).
OUTPUTS = ("correct", "margin", "logit_diff", "logprob_answer", "entropy", "entropy_vocab")
MIN_PREFIX = 4


def choice_token_ids(subject, examples: Sequence[Example]) -> list[list[int]]:
    """The first token of each choice; fails when two choices of one example share it."""
    tok = subject.tokenizer
    cache: dict[str, int] = {}
    out = []
    for n, ex in enumerate(examples):
        ids = []
        for c in ex.choices:
            if c not in cache:
                enc = tok(c, add_special_tokens=False)["input_ids"]
                if not enc:
                    raise ValueError(f"example {n}: choice {c!r} has no tokens")
                cache[c] = enc[0]
            ids.append(cache[c])
        if len(set(ids)) != len(ids):
            dup = [c for c, i in zip(ex.choices, ids) if ids.count(i) > 1]
            where = f" (line {ex.meta['line']})" if "line" in ex.meta else ""
            raise ValueError(f"example {n}{where}: choices {dup} start with the same token "
                             f"{tok.decode([ids[ids.index(cache[dup[0]])]])!r}; choices are scored by their first "
                             "token, so they must start differently")
        out.append(ids)
    return out


def _common_prefix(rows: list[list[int]]) -> int:
    n = min(len(r) for r in rows) - 1  # every prompt keeps at least one token of its own
    first = rows[0]
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


@torch.no_grad()
def last_logits(subject, prompts: Sequence[str], *, edits: Sequence[Edit] = (), batch_size: int = 16,
                prefix_cache: bool = True, backend: str = "auto", progress: bool = False, desc: str = "score"
                ) -> torch.Tensor:
    """Logits ``[n_prompts, vocab]`` at each prompt's last token, with ``edits`` applied."""
    tok = subject.tokenizer
    rows = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    for n, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {n} has no tokens")
        if len(r) > subject.n_ctx:
            raise ValueError(f"prompt {n} has {len(r)} tokens; {subject.name} handles at most {subject.n_ctx}")
    edits = tuple(edits)
    cacheable = prefix_cache and not any(isinstance(e, HOOK_EDITS) for e in edits)
    n_prefix = _common_prefix(rows) if cacheable and len(rows) > 1 else 0
    if n_prefix < MIN_PREFIX:
        n_prefix = 0
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    out = torch.empty(len(rows), subject.model.config.get_text_config().vocab_size)
    pad = subject.pad_token_id
    device = subject.device
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with subject.edited(*edits, backend=backend):
        prefix_kv = None
        if n_prefix:
            ids = torch.tensor([rows[0][:n_prefix]], device=device)
            prefix_kv = subject.model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            suffix = [rows[i][n_prefix:] for i in batch]
            width = max(len(r) for r in suffix)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in suffix], dtype=torch.long, device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in suffix], dtype=torch.long,
                                device=device)
            last = torch.tensor([[len(r) - 1] for r in suffix], device=device)
            kw = dict(use_cache=False)
            if prefix_kv is not None:
                kv = copy.deepcopy(prefix_kv)
                for layer in kv.layers:
                    layer.batch_repeat_interleave(len(batch))
                mask = torch.cat([torch.ones(len(batch), n_prefix, dtype=torch.long, device=device), mask], 1)
                kw = dict(use_cache=True, cache=kv)
            logits = subject.model(input_ids=ids, attention_mask=mask, logits_to_keep=last, **kw).logits
            out[batch] = logits[:, -1].float().cpu()
    return out


def score(subject, examples: Sequence[Example], *, edits: Sequence[Edit] = (), batch_size: int = 16,
          prefix_cache: bool = True, backend: str = "auto", progress: bool = False, desc: str = "score"
          ) -> pd.DataFrame:
    """One row per example: pred, answer, correct, margin, logit_diff, logprob_answer, entropy, entropy_vocab.

    margin: answer logit minus the best other choice's; logit_diff: answer logit minus the
    mean of the others (IO minus S for IOI); logprob_answer and entropy are over the choices
    (softmax of their logits); entropy_vocab is the entropy of the full next-token distribution.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("nothing to score: no examples")
    ids = choice_token_ids(subject, examples)
    logits = last_logits(subject, [e.prompt for e in examples], edits=edits, batch_size=batch_size,
                         prefix_cache=prefix_cache, backend=backend, progress=progress, desc=desc)
    logp_vocab = torch.log_softmax(logits, -1)
    ent_vocab = -(logp_vocab.exp() * logp_vocab).sum(-1)
    records = []
    for n, (ex, choice_ids) in enumerate(zip(examples, ids)):
        z = logits[n, choice_ids].double()
        logp = torch.log_softmax(z, -1)
        others = [i for i in range(len(choice_ids)) if i != ex.answer]
        pred = int(z.argmax())
        records.append({
            "idx": n, "pred": pred, "answer": ex.answer, "correct": pred == ex.answer,
            "margin": float(z[ex.answer] - z[others].max()),
            "logit_diff": float(z[ex.answer] - z[others].mean()),
            "logprob_answer": float(logp[ex.answer]),
            "entropy": float(-(logp.exp() * logp).sum()),
            "entropy_vocab": float(ent_vocab[n]),
            "choice_logits": [round(float(v), 6) for v in z],
        })
    return pd.DataFrame.from_records(records)


def summarize_scores(df: pd.DataFrame) -> dict[str, float]:
    """Mean of every per-example output (accuracy = mean of correct)."""
    out = {"accuracy": float(np.mean(df["correct"]))}
    for name in OUTPUTS[1:]:
        out[name] = float(np.mean(df[name]))
    out["n"] = len(df)
    return out


def metric_values(df: pd.DataFrame, metric: str) -> np.ndarray:
    """The per-example values whose mean is ``metric``."""
    column = "correct" if metric == "accuracy" else metric
    if column not in df:
        raise ValueError(f"unknown metric {metric!r}; known: accuracy, {', '.join(OUTPUTS[1:])}")
    return df[column].to_numpy(dtype=float)


def finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
