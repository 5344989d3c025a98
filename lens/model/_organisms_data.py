"""Data for the model organisms: the Bigram-Backcopy chain and repeated random sequences.

Both tasks share one vocabulary: 64 ordinary tokens (ids 0..63, written ``t00``..``t63``)
and three special tokens after them: ``<bos>`` (64, position 0 of every sequence),
``<pad>`` (65) and ``<unk>`` (66). Pad and unk never occur in the data; they exist so the
tokenizer can pad a batch and tokenize any text. Every sampler draws from its own
``torch.Generator``, so a seed fixes the data bit for bit and the global RNG is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

N_TOKENS = 64
BOS_ID = 64
PAD_ID = 65
UNK_ID = 66
VOCAB_SIZE = 67
TOKEN_NAMES = [f"t{i:02d}" for i in range(N_TOKENS)]
SPECIAL_TOKENS = {"<bos>": BOS_ID, "<pad>": PAD_ID, "<unk>": UNK_ID}

# The held-out stream of organism seed s is data seed HELD_OUT_SEED + s; training uses
# TRAIN_SEED + s. Public samplers default to data seed 1, which no training stream uses.
TRAIN_SEED = 1_000_000
HELD_OUT_SEED = 2_000_000


# --- Bigram-Backcopy (METHODS sec 2) ------------------------------------------------------
@dataclass(frozen=True)
class BigramChain:
    """The Markov chain behind Bigram-Backcopy data.

    transition: ``[64, 64]`` float64, row a is P(. | a). stationary: pi, ``[64]``.
    triggers: the ``n_triggers`` most likely tokens under pi, most likely first.
    """

    transition: torch.Tensor
    stationary: torch.Tensor
    triggers: tuple[int, ...]

    def save(self, path: Path) -> None:
        save_file(
            {"transition": self.transition, "stationary": self.stationary,
             "triggers": torch.tensor(self.triggers, dtype=torch.long)},
            str(path),
        )

    @classmethod
    def load(cls, path: Path) -> BigramChain:
        t = load_file(str(path))
        return cls(t["transition"], t["stationary"], tuple(int(i) for i in t["triggers"]))


def bigram_chain(seed: int = 0, *, n_triggers: int = 3, zipf_weight: float = 0.5, alpha: float = 0.1) -> BigramChain:
    """The synthetic chain of METHODS sec 2: each row is 0.5 * Zipf(1) + 0.5 * Dirichlet(0.1).

    The Zipf part ranks the tokens in one random order shared by all rows; it is what makes
    a few tokens frequent everywhere (with pure Dirichlet rows no sink forms). Triggers are
    the ``n_triggers`` most likely tokens under the stationary distribution.
    """
    rng = np.random.default_rng([0xB16, seed])  # numpy's PCG64: the same tables on every platform
    ranks = rng.permutation(N_TOKENS)  # token ranks[k] has Zipf rank k + 1
    zipf = np.empty(N_TOKENS)
    zipf[ranks] = 1.0 / np.arange(1, N_TOKENS + 1)
    zipf /= zipf.sum()
    dirichlet = rng.dirichlet(np.full(N_TOKENS, alpha), size=N_TOKENS)
    transition = zipf_weight * zipf[None, :] + (1 - zipf_weight) * dirichlet
    transition /= transition.sum(axis=1, keepdims=True)
    # Stationary distribution: left eigenvector of eigenvalue 1 (the chain is irreducible:
    # every entry is > 0 thanks to the Zipf part), refined by a few power steps.
    vals, vecs = np.linalg.eig(transition.T)
    pi = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1))]))
    pi /= pi.sum()
    for _ in range(50):
        pi = pi @ transition
    # Sort by (-pi, id) so ties cannot depend on the sort algorithm.
    order = sorted(range(N_TOKENS), key=lambda i: (-pi[i], i))
    return BigramChain(torch.from_numpy(transition), torch.from_numpy(pi), tuple(order[:n_triggers]))


def _sample_rows(cdf: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One draw per row of ``cdf`` (``[n, 64]`` cumulative probabilities) by inversion."""
    u = torch.rand(cdf.shape[0], 1, generator=gen, dtype=torch.float64)
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=N_TOKENS - 1)


def bigram_backcopy_data(
    n_seqs: int, seq_len: int = 64, *, seed: int = 1, chain: BigramChain | None = None
) -> tuple[torch.Tensor, dict]:
    """Bigram-Backcopy sequences ``[n_seqs, seq_len]`` (METHODS sec 2) and facts about them.

    x_0 = BOS; x_1 ~ pi restricted to non-triggers; for t >= 2, if x_{t-1} is a trigger then
    x_t = x_{t-2} (back-copy), else x_t ~ P(. | x_{t-1}). ``chain`` defaults to the chain of
    organism seed 0; pass ``subject.info["chain"]`` for another organism. Returns
    ``(tokens, info)`` with info keys ``triggers``, ``is_trigger`` and ``follows_trigger``
    (bool ``[n_seqs, seq_len]``, see :func:`trigger_mask` and :func:`follows_trigger`).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (BOS and one token), got {seq_len}")
    chain = chain if chain is not None else bigram_chain(0)
    gen = torch.Generator().manual_seed(seed)
    triggers = torch.tensor(chain.triggers, dtype=torch.long)
    cdf = chain.transition.cumsum(dim=1)
    first = chain.stationary.clone()
    first[triggers] = 0.0
    first_cdf = (first / first.sum()).cumsum(0).expand(n_seqs, N_TOKENS).contiguous()

    tokens = torch.empty(n_seqs, seq_len, dtype=torch.long)
    tokens[:, 0] = BOS_ID
    tokens[:, 1] = _sample_rows(first_cdf, gen)
    for t in range(2, seq_len):
        prev = tokens[:, t - 1]
        # Draw for every row, then overwrite the back-copied ones: the stream of random
        # numbers does not depend on where triggers fell, which keeps rows independent.
        drawn = _sample_rows(cdf[prev], gen)
        tokens[:, t] = torch.where(torch.isin(prev, triggers), tokens[:, t - 2], drawn)
    info = {
        "triggers": list(chain.triggers),
        "is_trigger": trigger_mask(tokens, chain.triggers),
        "follows_trigger": follows_trigger(tokens, chain.triggers),
    }
    return tokens, info


def trigger_mask(tokens: torch.Tensor, triggers) -> torch.Tensor:
    """Bool mask ``[batch, pos]``: the token at this position is a trigger.

    These are the query positions where the model must back-copy: the prediction made at
    position i is x_{i-1}.
    """
    return torch.isin(tokens, torch.as_tensor(list(triggers), dtype=torch.long))


def follows_trigger(tokens: torch.Tensor, triggers) -> torch.Tensor:
    """Bool mask ``[batch, pos]``: position t >= 2 whose previous token is a trigger (so x_t = x_{t-2})."""
    out = torch.zeros_like(tokens, dtype=torch.bool)
    out[:, 2:] = trigger_mask(tokens[:, 1:-1], triggers)
    return out


# --- Repeated random sequences (METHODS sec 11) -----------------------------------------------
def induction_data(
    n_seqs: int, seq_len: int = 48, *, seed: int = 1, min_period: int = 4, max_period: int = 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[BOS] + r + r + ...`` cut to ``seq_len``; r uniform over the 64 tokens (with repeats).

    The period len(r) is drawn per sequence from ``min_period..max_period``: with a fixed
    layout layer 0 can solve the task by position and no previous-token head forms
    (METHODS sec 11). Returns ``(tokens [n_seqs, seq_len], periods [n_seqs])``.
    """
    if not 1 <= min_period <= max_period:
        raise ValueError(f"need 1 <= min_period <= max_period, got {min_period}, {max_period}")
    gen = torch.Generator().manual_seed(seed)
    periods = torch.randint(min_period, max_period + 1, (n_seqs,), generator=gen)
    r = torch.randint(0, N_TOKENS, (n_seqs, max_period), generator=gen)
    idx = torch.arange(seq_len - 1).expand(n_seqs, -1) % periods[:, None]
    tokens = torch.cat([torch.full((n_seqs, 1), BOS_ID), r.gather(1, idx)], dim=1)
    return tokens, periods


def repeat_mask(periods: torch.Tensor, seq_len: int = 48) -> torch.Tensor:
    """Bool mask ``[batch, pos]``: position t repeats the token one period earlier (t > period).

    These are the targets an induction circuit can predict; the first period is random.
    """
    pos = torch.arange(seq_len)
    return pos[None, :] > periods[:, None]


def induction_test_data(n_seqs: int, period: int = 20, *, seed: int = 1) -> torch.Tensor:
    """The induction test of METHODS sec 10: ``BOS + r + r``, r of ``period`` distinct tokens.

    Distinct tokens make the induction target unique: query i (in the second copy) should
    attend key i - period + 1, the token after the earlier occurrence of its own token.
    """
    if not 1 <= period <= N_TOKENS:
        raise ValueError(f"period must be in 1..{N_TOKENS}, got {period}")
    gen = torch.Generator().manual_seed(seed)
    r = torch.stack([torch.randperm(N_TOKENS, generator=gen)[:period] for _ in range(n_seqs)])
    return torch.cat([torch.full((n_seqs, 1), BOS_ID), r, r], dim=1)
