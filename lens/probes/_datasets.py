"""Token-labelled datasets generated in code, for probes on real models.

``quotation_dataset``: sentences where the same words occur inside and outside double
quotes; label 1 = the token lies inside a quotation. The label depends on context, not on
the token's identity, which is what the control task (random label per token type)
cannot imitate: a good probe here is selective.
"""

from __future__ import annotations

import random

import torch

NAMES = ("Anna", "Tom", "Maria", "Ben", "Lucy", "Sam", "Nora", "Leo", "Ella", "Max")
VERBS = ("said", "wrote", "shouted", "whispered", "replied", "added", "asked")
WORDS = ("the", "green", "house", "river", "is", "very", "cold", "today", "we", "should", "walk", "to", "market",
         "and", "buy", "some", "fresh", "bread", "it", "was", "late", "when", "train", "left", "old", "dog", "slept",
         "near", "door", "my", "sister", "likes", "warm", "tea", "in", "morning", "they", "found", "a", "small", "key")


def quotation_texts(n: int, seed: int = 0, words: tuple[str, ...] = WORDS) -> list[tuple[str, list[tuple[int, int]]]]:
    """``n`` sentences and the character spans ``[start, end)`` of their quoted parts (quotes excluded)."""
    rng = random.Random(seed)
    WORDS = words  # noqa: N806
    out = []
    for _ in range(n):
        before = " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))
        quote = " ".join(rng.choices(WORDS, k=rng.randint(3, 7)))
        after = " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))
        name, verb = rng.choice(NAMES), rng.choice(VERBS)
        head = f"{before.capitalize()}, {name} {verb}, \""
        text = f"{head}{quote}\" and then {after}."
        out.append((text, [(len(head), len(head) + len(quote))]))
    return out


def vocabulary_words(tokenizer, n: int, seed: int = 0) -> tuple[str, ...]:
    """``n`` lowercase alphabetic words (3-10 letters) that are single tokens with a leading space.

    Many word types make the control task hard to memorise (Hewitt & Liang), so a high
    control accuracy cannot come from a small vocabulary.
    """
    found = set()
    for piece in tokenizer.get_vocab():
        text = tokenizer.convert_tokens_to_string([piece])
        w = text[1:]
        if text.startswith(" ") and w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 10:
            found.add(w)
    found = sorted(found)
    if len(found) < n:
        return WORDS
    return tuple(random.Random(seed).sample(found, n))


def quotation_dataset(subject, n: int, seed: int = 0, *, n_words: int = 2000
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Tokens ``[n, pos]`` (right-padded), lengths ``[n]``, labels ``[n, pos]`` and the texts.

    Words are drawn from ``n_words`` single-token words of the subject's vocabulary (the
    built-in list when it has too few). label 1: the token's characters lie inside a
    quotation; 0: outside; -1: padding, special tokens, and tokens that contain a quote mark.
    """
    tok = subject.tokenizer
    if not getattr(tok, "is_fast", False):
        raise ValueError("quotation_dataset needs a fast tokenizer (character offsets)")
    words = vocabulary_words(tok, n_words, seed)
    rows, labels, texts = [], [], []
    for text, spans in quotation_texts(n, seed, words):
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
        lab = []
        for (a, b), _ in zip(enc["offset_mapping"], enc["input_ids"]):
            piece = text[a:b]
            if b <= a or '"' in piece:
                lab.append(-1)
                continue
            core = (a + (len(piece) - len(piece.lstrip())), b)  # a leading space belongs to no side
            inside = any(s <= core[0] and core[1] <= e for s, e in spans)
            outside = all(core[1] <= s or core[0] >= e for s, e in spans)
            lab.append(1 if inside else 0 if outside else -1)
        rows.append(enc["input_ids"])
        labels.append(lab)
        texts.append(text)
    width = max(len(r) for r in rows)
    pad = subject.pad_token_id
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    lab_t = torch.tensor([l + [-1] * (width - len(l)) for l in labels], dtype=torch.long)
    return tokens, torch.tensor([len(r) for r in rows]), lab_t, texts
