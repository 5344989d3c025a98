"""Clean / corrupted prompt pairs with an answer and a wrong token: the input of every patching method.

A pair differs only where the task's information lives, so patching clean activations into
the corrupted run (or the reverse) measures how much of the answer a component carries.
Built-in pairs: ``ioi`` (the "ABC" corruption: the repeated subject replaced by a third
name), ``colored_objects`` (the asked object's colour swapped with another object's),
both from ``lens.experiments`` templates, and ``induction`` for the induction organism
(the earlier copy of the sequence replaced by fresh random tokens).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lens.experiments import IOI_NAMES, make_task
from lens.model.organisms import N_TOKENS, PAD_ID, induction_data


@dataclass(frozen=True)
class PromptPairs:
    """Token ids of clean and corrupted prompts, right-padded, and the tokens the metric compares.

    clean: ``[batch, pos]``; corrupted: ``[batch, pos_c]``; clean_lengths / corrupted_lengths:
    ``[batch]`` real tokens per row. answers: ``[batch, 2]`` = (answer id on the clean prompt,
    the competing id: the corrupted prompt's answer, or a distractor). Lengths may differ
    between a clean and a corrupted prompt: activations are then aligned on the last token
    (position ``t`` of a clean row meets position ``t - len_clean + len_corrupted``).
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    clean_lengths: torch.Tensor
    corrupted_lengths: torch.Tensor
    answers: torch.Tensor
    task: str = "custom"
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        b = self.clean.shape[0]
        for name in ("corrupted", "clean_lengths", "corrupted_lengths", "answers"):
            if getattr(self, name).shape[0] != b:
                raise ValueError(f"PromptPairs: {name} has {getattr(self, name).shape[0]} rows, clean has {b}")
        if self.answers.ndim != 2 or self.answers.shape[1] != 2:
            raise ValueError(f"answers must be [batch, 2] (answer id, wrong id), got {tuple(self.answers.shape)}")
        if b == 0:
            raise ValueError("PromptPairs needs at least one pair")
        if (self.clean_lengths < 1).any() or (self.corrupted_lengths < 1).any():
            raise ValueError("every prompt needs at least one token")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def same_lengths(self) -> bool:
        return bool((self.clean_lengths == self.corrupted_lengths).all())

    def subset(self, idx) -> PromptPairs:
        idx = torch.as_tensor(idx, dtype=torch.long)
        lc, lr = self.clean_lengths[idx], self.corrupted_lengths[idx]
        return PromptPairs(self.clean[idx][:, : int(lc.max())], self.corrupted[idx][:, : int(lr.max())], lc, lr,
                           self.answers[idx], self.task, self.meta)

    def chunks(self, size: int):
        for start in range(0, len(self), size):
            yield self.subset(range(start, min(start + size, len(self))))


def _pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def pairs_from_ids(clean: Sequence[Sequence[int]], corrupted: Sequence[Sequence[int]], answers: Sequence[int],
                   wrong: Sequence[int], *, pad: int = 0, task: str = "custom", meta: dict | None = None) -> PromptPairs:
    """PromptPairs from lists of token ids (one list per prompt)."""
    if not (len(clean) == len(corrupted) == len(answers) == len(wrong)):
        raise ValueError("clean, corrupted, answers and wrong need the same number of entries")
    c, lc = _pad(clean, pad)
    r, lr = _pad(corrupted, pad)
    ans = torch.tensor([[int(a), int(w)] for a, w in zip(answers, wrong)], dtype=torch.long)
    return PromptPairs(c, r, lc, lr, ans, task, dict(meta or {}))


def _first_token(subject, text: str) -> int:
    ids = subject.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} has no tokens")
    return ids[0]


def pairs_from_texts(subject, clean: Sequence[str], corrupted: Sequence[str], answers: Sequence[str],
                     wrong: Sequence[str], *, task: str = "custom") -> PromptPairs:
    """PromptPairs from texts; each answer / wrong string is represented by its first token."""
    enc = lambda t: subject.tokenizer(t, add_special_tokens=True)["input_ids"]  # noqa: E731
    return pairs_from_ids([enc(t) for t in clean], [enc(t) for t in corrupted],
                          [_first_token(subject, a) for a in answers], [_first_token(subject, w) for w in wrong],
                          pad=subject.pad_token_id, task=task)


# --- built-in tasks --------------------------------------------------------------------------
class _Found:
    """Pairs collected from templates until ``n`` are found (a pair whose answer and wrong
    token coincide cannot score a logit difference and is skipped)."""

    def __init__(self, n: int):
        self.n, self.rows = n, []

    def add(self, clean: list[int], corrupt: list[int], answer: int, wrong: int, prompt: str) -> bool:
        """Keep the pair unless answer == wrong; True once ``n`` pairs are kept."""
        if answer != wrong:
            self.rows.append((clean, corrupt, answer, wrong, prompt))
        return len(self.rows) == self.n

    def pairs(self, subject, task: str, label: str, meta: dict) -> PromptPairs:
        if len(self.rows) < self.n:
            raise ValueError(f"only {len(self.rows)} {label} pairs of equal length could be built, {self.n} asked for")
        clean, corrupt, ans, wrong, kept = (list(col) for col in zip(*self.rows))
        return pairs_from_ids(clean, corrupt, ans, wrong, pad=subject.pad_token_id, task=task,
                              meta={"prompts": kept, **meta})


def ioi_pairs(subject, n: int, seed: int = 0) -> PromptPairs:
    """IOI prompts from ``make_task("ioi")``; corrupted = the second mention of S replaced by a third
    name C of the same token length ("ABC"). Answer IO, wrong S (metric: logit difference)."""
    enc = lambda t: subject.tokenizer(t, add_special_tokens=True)["input_ids"]  # noqa: E731
    rng = random.Random(seed)
    task = make_task("ioi", 0, 4 * n + 20, seed)
    found = _Found(n)
    for ex in task.test:
        io, s = ex.meta["io"], ex.meta["s"]
        matches = list(re.finditer(rf"\b{re.escape(s)}\b", ex.prompt))
        if len(matches) != 2:
            continue
        c_ids = enc(ex.prompt)
        for c_name in rng.sample([x for x in IOI_NAMES if x not in (io, s)], len(IOI_NAMES) - 2):
            m = matches[1]
            text = ex.prompt[: m.start()] + c_name + ex.prompt[m.end():]
            r_ids = enc(text)
            if len(r_ids) == len(c_ids):
                break
        else:
            continue
        if found.add(c_ids, r_ids, _first_token(subject, f" {io}"), _first_token(subject, f" {s}"), ex.prompt):
            break
    return found.pairs(subject, "ioi", "IOI", {"corruption": "ABC (S2 -> C)", "seed": seed})


_SCENE = re.compile(r"Q: On the table, I see (.+?), (.+?), and (.+?)\. What color is the (.+?)\?\nA:$")


def colored_objects_pairs(subject, n: int, seed: int = 0, *, shots: int = 1) -> PromptPairs:
    """Colored Objects prompts from ``make_task("colored_objects")``; corrupted = the asked object's
    colour swapped with another object's in the last question (same words, other binding).
    Answer: the clean colour; wrong: the colour the object has in the corrupted prompt."""
    enc = lambda t: subject.tokenizer(t, add_special_tokens=True)["input_ids"]  # noqa: E731
    rng = random.Random(seed)
    task = make_task("colored_objects", 0, 3 * n + 20, seed, shots=shots)
    found = _Found(n)
    for ex in task.test:
        start = ex.prompt.rfind("Q: On the table")
        prefix, question = ex.prompt[:start], ex.prompt[start:]
        m = _SCENE.match(question)
        if m is None:
            continue
        items = [m.group(i).split(" ", 2) for i in (1, 2, 3)]  # [article, colour, thing]
        thing = m.group(4)
        k = next((i for i, it in enumerate(items) if it[2] == thing), None)
        if k is None:
            continue
        j = rng.choice([i for i in range(3) if i != k])
        swapped = [list(it) for it in items]
        swapped[k][1], swapped[j][1] = items[j][1], items[k][1]
        for it in swapped:
            it[0] = "an" if it[1][0] in "aeiou" else "a"
        text = prefix + (f"Q: On the table, I see {' '.join(swapped[0])}, {' '.join(swapped[1])}, and "
                         f"{' '.join(swapped[2])}. What color is the {thing}?\nA:")
        c_ids, r_ids = enc(ex.prompt), enc(text)
        if len(c_ids) != len(r_ids):
            continue
        a = _first_token(subject, f" {items[k][1].capitalize()}")
        w = _first_token(subject, f" {items[j][1].capitalize()}")
        if found.add(c_ids, r_ids, a, w, ex.prompt):
            break
    return found.pairs(subject, "colored_objects", "colored-objects", {"corruption": "colour swap", "seed": seed})


def induction_pairs(n: int, seed: int = 0, *, seq_len: int = 48, min_period: int = 4, max_period: int = 24
                    ) -> PromptPairs:
    """Repeated random sequences for the induction organism (``lens.model.organisms.induction_data``).

    Clean: ``[BOS] + r + r + ...`` cut to ``seq_len``; the answer is the token that follows the
    last one one period earlier. Corrupted: every token but BOS and the last replaced by fresh
    random tokens (no earlier copy to read). Wrong: another token of r (a distractor).
    """
    tokens, periods = induction_data(n, seq_len, seed=seed, min_period=min_period, max_period=max_period)
    gen = torch.Generator().manual_seed(seed + 7919)
    corrupt = tokens.clone()
    corrupt[:, 1:-1] = torch.randint(0, N_TOKENS, (n, seq_len - 2), generator=gen)
    last = seq_len - 1
    answer = tokens[torch.arange(n), last + 1 - periods]
    wrong = []
    for b in range(n):
        r = tokens[b, 1: 1 + int(periods[b])].tolist()
        others = [t for t in r if t != int(answer[b])] or [t for t in range(N_TOKENS) if t != int(answer[b])]
        wrong.append(others[int(torch.randint(len(others), (1,), generator=gen))])
    lengths = torch.full((n,), seq_len, dtype=torch.long)
    return PromptPairs(tokens, corrupt, lengths, lengths.clone(),
                       torch.stack([answer, torch.tensor(wrong)], 1), "induction",
                       {"periods": periods.tolist(), "pad": PAD_ID, "seed": seed})


def make_pairs(subject, task: str, n: int, seed: int = 0, **options) -> PromptPairs:
    """Built-in pairs by task name: ``"ioi"``, ``"colored_objects"`` or ``"induction"`` (organism)."""
    if task == "ioi":
        return ioi_pairs(subject, n, seed, **options)
    if task == "colored_objects":
        return colored_objects_pairs(subject, n, seed, **options)
    if task == "induction":
        return induction_pairs(n, seed, **options)
    raise ValueError(f"unknown circuit task {task!r}; built in: ioi, colored_objects, induction")
