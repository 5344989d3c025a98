"""Head checks that need the model: they run forward passes or generate, so they are not analyzers.

* ``confirm_dormant``: the loss half of METHODS sec 2's dormant test. A head is dormant on
  input x when s(x) = mean_{i>=1} A[i, 0] >= tau AND moving all its attention to
  position 0 (``MoveToBOS``) changes the loss on x by less than ``rel_tol`` (1%) relative.
* ``retrieval_scores``: METHODS sec 10's retrieval score from a needle-in-a-haystack run
  generated here, in code (no dataset).
* ``losses``: per-input next-token loss with edits applied, which both use.

Both return ``lens.analyzers.Findings``, like the pure analyzers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from lens.analyzers import Findings, head_frame, sink_scores, top_heads
from lens.edits import Edit, MoveToBOS
from lens.kernels import StatOptions
from lens.model import Subject
from lens.model import normalise_inputs as _normalise_inputs
from lens.record import capture as lens_capture

__all__ = ["confirm_dormant", "losses", "needle_samples", "retrieval_scores"]


@torch.no_grad()
def _batch_logits(subject: Subject, ids: torch.Tensor, mask: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` (fp32) with ``edits`` applied through ``subject.edited``."""
    att = None if bool(mask.all()) else mask.long()
    if not edits:
        return subject.model(input_ids=ids, attention_mask=att, use_cache=False).logits.float()
    with subject.edited(*edits):
        return subject.model(input_ids=ids, attention_mask=att, use_cache=False).logits.float()


def losses(subject: Subject, inputs, edits: Sequence[Edit] = (), *, batch_size: int = 8) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) per input, ``[batch]``, with ``edits`` applied.

    inputs: texts or token ids, as for ``lens.capture``. Targets are positions 1..T-1.
    """
    rows = _normalise_inputs(subject, inputs)
    pad = subject.pad_token_id
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(r) for r in batch)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=subject.device)
        mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in batch], device=subject.device)
        logits = _batch_logits(subject, ids, mask, edits)[:, :-1]
        tok_loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        m = mask[:, 1:].float()
        out.append(((tok_loss * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
    return torch.cat(out)


def confirm_dormant(subject: Subject, inputs, heads: Sequence[tuple[int, int]] | None = None, *,
                    tau: float = 0.5, rel_tol: float = 0.01, capture=None, batch_size: int = 8) -> Findings:
    """Dormant per (input, head) with the loss check (METHODS sec 2): s(x) >= tau and |dL/L| < rel_tol.

    heads: the heads to test (default: every head with s(x) >= tau on some input, the
    candidates the pure analyzer finds). One forward pass per head and batch with
    ``MoveToBOS(layer, head)``. ``capture``: a Capture of the same inputs with ``sink_mass``
    (made here when not given). Columns: input, layer, head, sink_score, loss, loss_moved,
    rel_change, dormant, state ("dormant" or "active").
    """
    rows = _normalise_inputs(subject, inputs)
    if capture is None:
        capture = lens_capture(subject, rows, stats=["sink_mass"], value_norm=False, resid_norm=False,
                               massive=False, batch_size=batch_size)
    if capture.n_inputs != len(rows):
        raise ValueError(f"capture has {capture.n_inputs} inputs, but {len(rows)} were given")
    s = sink_scores(capture)  # [b, L, H]
    if heads is None:
        hit = (s >= tau).any(0)
        heads = [(int(l), int(h)) for l, h in torch.nonzero(hit).tolist()]
    subject.check_heads(heads)
    base = losses(subject, rows, batch_size=batch_size)
    frames = []
    for layer, head in heads:
        moved = losses(subject, rows, [MoveToBOS(layer=layer, head=head)], batch_size=batch_size)
        rel = (moved - base) / base.clamp(min=1e-12)
        score = s[:, layer, head]
        dormant = (score >= tau) & (rel.abs() < rel_tol)
        frames.append(pd.DataFrame({
            "input": range(len(rows)), "layer": layer, "head": head, "sink_score": score.numpy(),
            "loss": base.numpy(), "loss_moved": moved.numpy(), "rel_change": rel.numpy(),
            "dormant": dormant.numpy()}))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["input", "layer", "head", "sink_score", "loss", "loss_moved", "rel_change", "dormant"])
    frame["state"] = ["dormant" if d else "active" for d in frame["dormant"]]
    params = {"tau": tau, "rel_tol": rel_tol, "edit": "MoveToBOS", "heads": [list(h) for h in heads],
              "n_inputs": len(rows)}
    share = float(frame["dormant"].mean()) if len(frame) else float("nan")
    return Findings("confirm_dormant", frame, params, level="input", summary={"dormant_share": share},
                    text=f"dormant (s >= {tau:g} and |dL/L| < {rel_tol:g}) on {100 * share:.0f}% of (input, head)")


def _pool(subject: Subject, vocab: Sequence[int] | None) -> torch.Tensor:
    if vocab is not None:
        return torch.as_tensor(list(vocab), dtype=torch.long)
    special = set(getattr(subject.tokenizer, "all_special_ids", []) or [])
    n = min(len(subject.tokenizer), subject.model.get_output_embeddings().weight.shape[0])
    return torch.tensor([i for i in range(n) if i not in special], dtype=torch.long)


def needle_samples(subject: Subject, *, n_samples: int = 16, haystack_len: int = 24, needle_len: int = 8,
                   cue_len: int = 2, seed: int = 0, vocab: Sequence[int] | None = None
                   ) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The needle-in-a-haystack prompts ``retrieval_scores`` runs, and the span to recall in each.

    Each prompt: [BOS if the tokenizer adds one] + haystack (``haystack_len`` random
    tokens from ``vocab``, default every non-special id) with a needle of ``needle_len`` distinct
    tokens that occur nowhere else inserted at a random depth, then the needle's first
    ``cue_len`` tokens again. Returns ``(prompts, spans)``: token ids (all the same length)
    and, per prompt, the positions ``[s, e)`` of the needle tokens still to recall (the
    ``needle_len - cue_len`` tokens after the cue). Seeded: same arguments, same prompts.
    """
    if not 0 <= cue_len < needle_len:
        raise ValueError(f"need 0 <= cue_len < needle_len, got {cue_len}, {needle_len}")
    if n_samples < 1 or haystack_len < 0:
        raise ValueError(f"need n_samples >= 1 and haystack_len >= 0, got {n_samples}, {haystack_len}")
    pool = _pool(subject, vocab)
    if pool.numel() < needle_len + 2:
        raise ValueError(f"vocabulary of {pool.numel()} tokens is too small for a needle of {needle_len}")
    gen = torch.Generator().manual_seed(seed)
    bos = [subject.tokenizer.bos_token_id] if subject.prepends_bos else []
    prompts, spans = [], []
    for _ in range(n_samples):
        perm = pool[torch.randperm(pool.numel(), generator=gen)]
        needle, rest = perm[:needle_len], perm[needle_len:]
        hay = rest[torch.randint(0, rest.numel(), (haystack_len,), generator=gen)]
        depth = int(torch.randint(0, haystack_len + 1, (1,), generator=gen))
        ids = bos + hay[:depth].tolist() + needle.tolist() + hay[depth:].tolist() + needle[:cue_len].tolist()
        start = len(bos) + depth
        prompts.append(ids)
        spans.append((start + cue_len, start + needle_len))
    return prompts, spans


@torch.no_grad()
def retrieval_scores(subject: Subject, *, n_samples: int = 16, haystack_len: int = 24, needle_len: int = 8,
                     cue_len: int = 2, threshold: float = 0.1, seed: int = 0,
                     vocab: Sequence[int] | None = None) -> Findings:
    """Retrieval score per head from a needle-in-a-haystack copy run (METHODS sec 10, Wu et al.).

    Prompts from ``needle_samples`` (same arguments): a haystack of random tokens with a
    needle of distinct tokens inside, then the needle's first ``cue_len`` tokens again.
    Greedy generation continues for the rest of the needle. At each generated step, for
    each head: if the argmax key of the newest query lies in the needle span still to
    recall, [s + cue_len, e), and the generated token equals the token there, the head
    scores 1 / (e - s - cue_len). So a head that copies the whole needle scores 1; the
    table gives the mean over samples (``retrieval_score``, in [0, 1]) and ``retrieval`` =
    score > ``threshold``. ``summary["recall"]``: the share of samples whose generation
    reproduces at least half of the needle's remaining tokens in place;
    ``summary["token_recall"]``: that fraction per sample.
    """
    prompts, spans = needle_samples(subject, n_samples=n_samples, haystack_len=haystack_len,
                                    needle_len=needle_len, cue_len=cue_len, seed=seed, vocab=vocab)
    n_new = needle_len - cue_len
    total = len(prompts[0]) + n_new - 1
    if total > subject.n_ctx:
        raise ValueError(f"samples need {total} positions; {subject.name} has {subject.n_ctx}")

    ids = torch.tensor(prompts, device=subject.device)
    # Only the last position's logits are needed (saves the unembedding of every other position).
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(subject.model.forward).parameters else {}
    for _ in range(n_new):  # greedy, whole prefix each step: short contexts, no cache to manage
        nxt = subject.model(input_ids=ids, use_cache=False, **last).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    generated = ids[:, -n_new:].cpu()
    # The query that produced generated token k is the position just before it.
    cap = lens_capture(subject, ids[:, :-1].cpu(), stats=["topk_idx"], options=StatOptions(topk=1),
                       value_norm=False, resid_norm=False, massive=False)
    p0 = len(prompts[0]) - 1
    top = cap.stats["topk_idx"][:, :, :, p0:p0 + n_new, 0]  # [sample, L, H, step]
    seq = ids.cpu()
    score = torch.zeros(n_samples, subject.n_layers, subject.n_heads, dtype=torch.double)
    recall = []
    for b, (s, e) in enumerate(spans):
        key = top[b]
        in_span = (key >= s) & (key < e)
        tok_at_key = seq[b][key.clamp(min=0)]
        hits = in_span & (tok_at_key == generated[b][None, None, :])
        score[b] = hits.double().sum(-1) / (e - s)
        recall.append(float((generated[b] == seq[b, s:e]).double().mean()))
    per_head = score.mean(0)
    frame = head_frame(subject.n_layers, subject.n_heads, retrieval_score=per_head, retrieval=per_head > threshold)
    recalled = sum(r >= 0.5 for r in recall) / n_samples
    params = {"n_samples": n_samples, "haystack_len": haystack_len, "needle_len": needle_len, "cue_len": cue_len,
              "threshold": threshold, "seed": seed, "vocab_size": int(_pool(subject, vocab).numel())}
    n_ret = int((per_head > threshold).sum())
    summary = {"recall": recalled, "mean_token_recall": sum(recall) / n_samples, "token_recall": recall,
               "n_retrieval_heads": n_ret,
               "share_retrieval_heads": n_ret / per_head.numel()}
    text = (f"{n_ret} retrieval head(s) (score > {threshold:g}); recall {100 * recalled:.0f}% of samples; "
            f"top: {top_heads(per_head)}")
    return Findings("retrieval", frame, params, level="head", summary=summary, text=text)
