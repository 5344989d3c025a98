"""Texts shipped with the workbench.

``prompts.txt``: 69 short natural-language paragraphs written for this project (no
third-party text), one per line, on varied topics (science, daily life, stories,
how-tos, history). Each gives at least 64 SmolLM2 tokens, so the attention-sink metric
can be measured at METHODS' T = 64 (``prompts(tokens=64, tokenizer=...)`` cuts them).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

__all__ = ["prompts"]


@lru_cache(maxsize=1)
def _lines() -> tuple[str, ...]:
    text = resources.files(__name__).joinpath("prompts.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def prompts(n: int | None = None, *, tokens: int | None = None, tokenizer=None) -> list[str] | list[list[int]]:
    """The shipped texts (the first ``n``, default all).

    With ``tokens`` and a ``tokenizer`` (a Hugging Face tokenizer or ``subject.tokenizer``)
    returns token ids instead, each text cut to exactly ``tokens`` ids as the model sees
    them (special tokens such as BOS included): ready for ``lens.capture``. Texts shorter
    than that raise, so a figure measured at T = ``tokens`` really is at that T.
    """
    texts = list(_lines())
    if n is not None:
        if not 1 <= n <= len(texts):
            raise ValueError(f"n must be in 1..{len(texts)}, got {n}")
        texts = texts[:n]
    if tokens is None:
        return texts
    if tokenizer is None:
        raise ValueError("cutting to a number of tokens needs the tokenizer")
    out = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) < tokens:
            raise ValueError(f"text {i} has only {len(ids)} tokens, fewer than {tokens}")
        out.append(list(ids[:tokens]))
    return out
