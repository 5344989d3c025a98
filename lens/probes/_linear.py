"""Linear probes scored by grouped cross-validation, with a control task (Hewitt & Liang 2019).

A probe is a logistic regression (classification) or a ridge regression (real-valued
targets) on one vector per token, on standardised features. Rows are grouped by the
*sequence* they come from (a prompt's tokens are one group): ``GroupKFold`` keeps every
group on one side of each split, so a probe cannot pass by memorising a neighbour of the
same sequence. Each outer fold chooses the regularisation C by an inner grouped
cross-validation on its training rows (``LogisticRegressionCV`` / ``RidgeCV``) and scores
the held-out rows; the baseline is ``DummyClassifier(strategy="most_frequent")`` on the same
folds. Scores are the mean over folds, with the standard deviation over folds as their spread.
Control task: every token *type* (token id) gets a random label drawn from the real labels'
distribution, fixed for the whole dataset; the same probe is trained on it, fold by fold.
Selectivity = accuracy - control accuracy: what the representation encodes beyond what a
probe can memorise from token identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

FOLDS = 5  # outer folds: every row is held out once, by a probe trained on the other 4/5
INNER_FOLDS = 3  # grouped folds inside each outer training set that choose C
# The C grid (inverse L2 strength on standardised features): strong to weak regularisation
# around the 1.0 that was fixed before, one decade apart; each value costs a fit per inner fold.
CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# Probes are small (hundreds to a few thousand rows, d_model <= ~1000): BLAS threads only
# synchronise. Measured on the 2-core machine: six lbfgs fits of the 59-way Bigram-Backcopy
# probe (440 x 128) took 3.8 s of CPU with 2 OpenBLAS threads and 0.27 s with one.
BLAS_THREADS = 1


@dataclass(frozen=True)
class ProbeResult:
    """Held-out scores of one probe (and its control), one entry per outer fold.

    Ridge probes score R^2; their baseline is the R^2 of predicting the training mean.
    """

    fold_accuracy: tuple[float, ...]  # held-out accuracy of each fold (ridge: R^2)
    fold_train_accuracy: tuple[float, ...]
    fold_control_accuracy: tuple[float, ...] | None  # the same probe on the control task (None when not run)
    fold_majority: tuple[float, ...]  # DummyClassifier(most_frequent) held out (ridge: DummyRegressor(mean) R^2)
    fold_c: tuple[float, ...]  # the C the inner cross-validation chose in each fold
    n_train: int  # training rows per fold (mean, rounded)
    n_test: int  # held-out rows per fold (mean, rounded); over all folds every row is held out once
    kind: str

    @property
    def folds(self) -> int:
        return len(self.fold_accuracy)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def accuracy_std(self) -> float:
        """Standard deviation of the held-out accuracy over folds (ddof 0, as scikit-learn reports it)."""
        return float(np.std(self.fold_accuracy))

    @property
    def train_accuracy(self) -> float:
        return float(np.mean(self.fold_train_accuracy))

    @property
    def control_accuracy(self) -> float | None:
        return None if self.fold_control_accuracy is None else float(np.mean(self.fold_control_accuracy))

    @property
    def majority(self) -> float:
        return float(np.mean(self.fold_majority))

    @property
    def selectivity(self) -> float | None:
        return None if self.control_accuracy is None else self.accuracy - self.control_accuracy

    @property
    def selectivity_std(self) -> float | None:
        """Standard deviation over folds of each fold's accuracy - control accuracy."""
        if self.fold_control_accuracy is None:
            return None
        return float(np.std(np.subtract(self.fold_accuracy, self.fold_control_accuracy)))

    @property
    def c(self) -> float:
        """The median over folds of the chosen C (nan when no fold had two classes to fit)."""
        chosen = [c for c in self.fold_c if not np.isnan(c)]
        return float(np.median(chosen)) if chosen else float("nan")

    def as_row(self) -> dict:
        return {"accuracy": self.accuracy, "accuracy_std": self.accuracy_std,
                "control_accuracy": self.control_accuracy, "selectivity": self.selectivity,
                "selectivity_std": self.selectivity_std, "train_accuracy": self.train_accuracy,
                "majority": self.majority, "c": self.c, "folds": self.folds, "n_train": self.n_train,
                "n_test": self.n_test}


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
    """Boolean train / test masks over rows, whole sequences on one side (the attentive probe's one split)."""
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


def _folds(groups: np.ndarray, n_splits: int, seed: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices of a GroupKFold over ``groups``; at most one fold per group."""
    n = min(n_splits, len(np.unique(groups)))
    splitter = GroupKFold(n, shuffle=seed is not None, random_state=seed)
    return list(splitter.split(np.zeros((len(groups), 1)), groups=groups))


def _probe(kind: str, groups: np.ndarray, cs: Sequence[float], seed: int):
    """A standardise-then-fit pipeline whose C (ridge: alpha = 1/C) is chosen by grouped CV on ``groups``."""
    inner = _folds(groups, INNER_FOLDS, seed)
    if kind == "logistic":
        # l1_ratios=(0,): plain L2; the default will change and warns until it does
        model = LogisticRegressionCV(Cs=list(cs), l1_ratios=(0.0,), cv=inner, scoring="accuracy", max_iter=2000,
                                     use_legacy_attributes=False)
    else:
        model = RidgeCV(alphas=[1.0 / c for c in cs], cv=inner)
    return make_pipeline(StandardScaler(), model)


def _fit_fold(kind: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, train: np.ndarray, test: np.ndarray,
              cs: Sequence[float], seed: int) -> tuple[float, float, float]:
    """(train score, held-out score, chosen C) of one outer fold."""
    y_tr = y[train]
    if kind == "logistic" and len(np.unique(y_tr)) < 2:
        # one class to learn: every fit predicts it, and no C is chosen
        return float(np.mean(y_tr == y_tr[0])), float(np.mean(y[test] == y_tr[0])), float("nan")
    model = _probe(kind, groups[train], cs, seed).fit(x[train], y_tr)
    last = model[-1]
    c = float(last.C_) if kind == "logistic" else 1.0 / float(last.alpha_)
    return float(model.score(x[train], y_tr)), float(model.score(x[test], y[test])), c


def fit_probe(x, y, *, seq: np.ndarray | None = None, types: np.ndarray | None = None, kind: str = "logistic",
              folds: int = FOLDS, cs: Sequence[float] = CS, seed: int = 0, control: bool = True) -> ProbeResult:
    """Train a probe on ``x`` ``[n, d]`` -> ``y`` ``[n]`` and score it by grouped cross-validation.

    seq: ``[n]`` the sequence (prompt) each row comes from, the CV group (default: each row its
    own). types: ``[n]`` token ids for the control task (required when control=True). folds:
    outer folds (at most one per sequence); cs: the C grid of the inner CV (ridge: alpha = 1/C).
    seed: the control task's labels and the shuffling of sequences into folds.

    Why nine parameters: the data (x, y, seq, types) and the five cross-validation settings that
    ``probe_layers``, ``probe_heads`` and ``probe_capture`` pass through by keyword.
    """
    if kind not in ("logistic", "ridge"):
        raise ValueError(f"probe kind must be 'logistic' or 'ridge', got {kind!r}")
    x = np.asarray(x.float().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x must be [n, d] and y [n] with the same n, got {x.shape} and {y.shape}")
    seq = np.arange(len(y)) if seq is None else np.asarray(seq)
    if len(np.unique(seq)) < 3:
        raise ValueError("need at least three sequences: two to choose C on while one is held out")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    yc = None
    if control:
        if types is None:
            raise ValueError("the control task needs the token type (id) of each row: pass types=")
        yc = control_labels(np.asarray(types), y, seed)
    baseline = DummyClassifier(strategy="most_frequent") if kind == "logistic" else DummyRegressor(strategy="mean")
    train_acc, acc, ctl, majority, chosen, sizes = [], [], [], [], [], []
    with threadpool_limits(limits=BLAS_THREADS):  # restored on exit
        for train, test in _folds(seq, folds, seed):
            tr, te, c = _fit_fold(kind, x, y, seq, train, test, cs, seed)
            train_acc.append(tr)
            acc.append(te)
            chosen.append(c)
            if yc is not None:
                ctl.append(_fit_fold(kind, x, yc, seq, train, test, cs, seed)[1])
            majority.append(float(baseline.fit(x[train], y[train]).score(x[test], y[test])))
            sizes.append((len(train), len(test)))
    n_train, n_test = np.mean(sizes, axis=0).round().astype(int).tolist()
    return ProbeResult(tuple(acc), tuple(train_acc), tuple(ctl) if yc is not None else None, tuple(majority),
                       tuple(chosen), n_train, n_test, kind)
