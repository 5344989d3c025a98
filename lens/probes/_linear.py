"""Linear probes with held-out evaluation and a control task (Hewitt & Liang 2019).

A probe is a logistic regression (classification) or a ridge regression (real-valued
targets) on one vector per token. Train and test are split by *sequence* (all tokens of
one input land on the same side), so a probe cannot pass by memorising neighbours.
Control task: every token *type* (token id) gets a random label drawn from the real
labels' distribution, fixed for the whole dataset; the same probe is trained on it.
Selectivity = accuracy - control accuracy: what the representation encodes beyond what a
probe can memorise from token identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ProbeResult:
    """Held-out scores of one probe (and its control)."""

    accuracy: float  # held-out accuracy (ridge: R^2)
    train_accuracy: float
    control_accuracy: float | None  # same probe on the control task (None when not run)
    majority: float  # accuracy of always predicting the most common training label (ridge: 0)
    n_train: int
    n_test: int
    kind: str

    @property
    def selectivity(self) -> float | None:
        return None if self.control_accuracy is None else self.accuracy - self.control_accuracy

    def as_row(self) -> dict:
        return {"accuracy": self.accuracy, "control_accuracy": self.control_accuracy,
                "selectivity": self.selectivity, "train_accuracy": self.train_accuracy, "majority": self.majority,
                "n_train": self.n_train, "n_test": self.n_test}


def token_rows(labels: torch.Tensor | np.ndarray, lengths: torch.Tensor | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (sequence, position) pairs that carry a label, from ``labels`` ``[batch, pos]``.

    Entries < 0 (and positions past ``lengths``) are ignored. Returns ``(seq, pos, y)``.
    """
    lab = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    if lab.ndim != 2:
        raise ValueError(f"labels must be [batch, pos], got shape {tuple(lab.shape)}")
    keep = lab >= 0
    if lengths is not None:
        keep &= torch.arange(lab.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]
    seq, pos = keep.nonzero(as_tuple=True)
    return seq.numpy(), pos.numpy(), lab[seq, pos].numpy()


def split_by_sequence(seq: np.ndarray, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train / test masks over rows, whole sequences on one side."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    ids = np.unique(seq)
    if len(ids) < 2:
        raise ValueError("need at least two sequences to hold one out")
    rng = np.random.default_rng(seed)
    n_test = min(len(ids) - 1, max(1, round(test_frac * len(ids))))
    test_ids = rng.choice(ids, size=n_test, replace=False)
    test = np.isin(seq, test_ids)
    return ~test, test


def control_labels(types: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Hewitt & Liang control task: each token type gets one label drawn from the empirical label distribution."""
    rng = np.random.default_rng(seed)
    values, counts = np.unique(y, return_counts=True)
    uniq = np.unique(types)
    table = dict(zip(uniq.tolist(), rng.choice(values, size=len(uniq), p=counts / counts.sum()).tolist()))
    return np.array([table[t] for t in types.tolist()], dtype=y.dtype)


def _fit_score(kind: str, x_tr, y_tr, x_te, y_te, c: float, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        if len(np.unique(y_tr)) < 2:
            v = float(np.mean(y_te == y_tr[0]))
            return float(np.mean(y_tr == y_tr[0])), v
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    elif kind == "ridge":
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0 / c))
    else:
        raise ValueError(f"probe kind must be 'logistic' or 'ridge', got {kind!r}")
    model.fit(x_tr, y_tr)
    return float(model.score(x_tr, y_tr)), float(model.score(x_te, y_te))


def fit_probe(x, y, *, seq: np.ndarray | None = None, types: np.ndarray | None = None, kind: str = "logistic",
              test_frac: float = 0.25, seed: int = 0, c: float = 1.0, control: bool = True) -> ProbeResult:
    """Train a probe on ``x`` ``[n, d]`` -> ``y`` ``[n]`` and score it on held-out rows.

    seq: ``[n]`` sequence index of each row (held-out split by sequence; default: each row its
    own sequence). types: ``[n]`` token ids for the control task (required when control=True).
    c: inverse regularisation strength (logistic C; ridge alpha = 1/c). Features are standardised.
    """
    x = np.asarray(x.float().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x must be [n, d] and y [n] with the same n, got {x.shape} and {y.shape}")
    seq = np.arange(len(y)) if seq is None else np.asarray(seq)
    train, test = split_by_sequence(seq, test_frac, seed)
    tr_acc, acc = _fit_score(kind, x[train], y[train], x[test], y[test], c, seed)
    ctl = None
    if control:
        if types is None:
            raise ValueError("the control task needs the token type (id) of each row: pass types=")
        yc = control_labels(np.asarray(types), y, seed)
        ctl = _fit_score(kind, x[train], yc[train], x[test], yc[test], c, seed)[1]
    if kind == "logistic":
        vals, counts = np.unique(y[train], return_counts=True)
        majority = float(np.mean(y[test] == vals[counts.argmax()]))
    else:
        majority = 0.0
    return ProbeResult(acc, tr_acc, ctl, majority, int(train.sum()), int(test.sum()), kind)
