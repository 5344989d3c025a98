"""Attentive probe: a learned query attends over positions, a linear layer reads the pooled vector.

For sequence-level labels: ``scores_t = (W_k x_t) . q / sqrt(d)`` over the real positions,
``pooled = sum_t softmax(scores)_t x_t``, ``logits = W pooled + b``. Trained with AdamW
on cross-entropy; the attention weights say where the label was read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lens.probes._linear import split_by_sequence


class AttentiveProbe(torch.nn.Module):
    """Attention pooling with one learned query over ``[batch, pos, d]`` inputs, then a linear classifier."""

    def __init__(self, d_model: int, n_classes: int, d_key: int = 32):
        super().__init__()
        self.key = torch.nn.Linear(d_model, d_key, bias=False)
        self.query = torch.nn.Parameter(torch.zeros(d_key))
        self.out = torch.nn.Linear(d_model, n_classes)
        self.d_key = d_key

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention over positions ``[batch, pos]`` (0 at masked positions)."""
        s = self.key(x) @ self.query / math.sqrt(self.d_key)
        return s.masked_fill(~mask, float("-inf")).softmax(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.weights(x, mask)
        return self.out(torch.einsum("bt,btd->bd", w, x))


@dataclass
class AttentiveResult:
    accuracy: float
    train_accuracy: float
    majority: float
    probe: AttentiveProbe
    test_weights: torch.Tensor  # [n_test, pos]: where the probe looked on the held-out inputs
    n_train: int
    n_test: int


def fit_attentive_probe(x: torch.Tensor, mask: torch.Tensor, y, *, test_frac: float = 0.25, seed: int = 0,
                        epochs: int = 200, lr: float = 1e-2, weight_decay: float = 1e-3, d_key: int = 32
                        ) -> AttentiveResult:
    """Train an ``AttentiveProbe`` on ``x`` ``[n, pos, d]`` (real positions ``mask`` ``[n, pos]``) -> ``y`` ``[n]``.

    Full-batch AdamW for ``epochs`` steps on standardised features; seeded; held-out split
    by input. Labels are class indices (any integers; remapped to 0..k-1).

    Why nine parameters: the data (x, mask, y), then the split and the optimiser's settings, each a
    keyword with a default.
    """
    x = torch.as_tensor(x).float()
    mask = torch.as_tensor(mask).bool()
    y_np = np.asarray(y)
    if x.ndim != 3 or mask.shape != x.shape[:2] or len(y_np) != len(x):
        raise ValueError(f"x must be [n, pos, d], mask [n, pos], y [n]; got {tuple(x.shape)}, "
                         f"{tuple(mask.shape)}, {y_np.shape}")
    if not mask.any(1).all():
        raise ValueError("every input needs at least one real position")
    classes, yi = np.unique(y_np, return_inverse=True)
    yt = torch.as_tensor(yi, dtype=torch.long)
    train, test = split_by_sequence(np.arange(len(yt)), test_frac, seed)
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    m = mask[train][..., None].float()
    mu = (x[train] * m).sum((0, 1)) / m.sum()
    sd = (((x[train] - mu) ** 2 * m).sum((0, 1)) / m.sum()).sqrt().clamp(min=1e-6)
    xs = (x - mu) / sd
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = AttentiveProbe(x.shape[-1], len(classes), d_key)
        opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            loss = F.cross_entropy(probe(xs[train], mask[train]), yt[train])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = probe(xs, mask).argmax(-1)
        acc = float((pred[test] == yt[test]).float().mean())
        tr_acc = float((pred[train] == yt[train]).float().mean())
        weights = probe.weights(xs[test], mask[test])
    counts = torch.bincount(yt[train], minlength=len(classes))
    majority = float((yt[test] == counts.argmax()).float().mean())
    return AttentiveResult(acc, tr_acc, majority, probe, weights, int(train.sum()), int(test.sum()))
