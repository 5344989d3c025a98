"""Metrics read at each prompt's last real token: logit difference, answer probability, KL.

Every metric maps final-position logits ``[batch, vocab]`` (plus the pairs, and the clean
run's logits for KL) to one number per example ``[batch]``; callers average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_diff(logits: torch.Tensor, answers: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """``logit[answer] - logit[wrong]`` per example; answers ``[batch, 2]`` = (answer id, wrong id)."""
    return logits.gather(1, answers[:, :1]).squeeze(1) - logits.gather(1, answers[:, 1:2]).squeeze(1)


def answer_prob(logits: torch.Tensor, answers: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax probability of the answer token per example."""
    return logits.float().softmax(-1).gather(1, answers[:, :1]).squeeze(1)


def kl_div(logits: torch.Tensor, answers: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """KL(clean || this run) of the next-token distributions, in nats, per example (0 on the clean run)."""
    if clean_logits is None:
        raise ValueError("the KL metric needs the clean run's logits")
    p = clean_logits.float().log_softmax(-1)
    q = logits.float().log_softmax(-1)
    return F.kl_div(q, p, log_target=True, reduction="none").sum(-1)


METRICS = {"logit_diff": logit_diff, "prob": answer_prob, "kl": kl_div}


def get_metric(name: str):
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
