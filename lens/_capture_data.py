"""The Capture: what one capture recorded, and how it is saved (safetensors + JSON, no pickle).

Axis vocabulary, used everywhere in the workbench (pattern convention as in
TransformerLens: ``[batch, head, query_pos, key_pos]``):

=================  =====================================  ===========================================
name               shape                                  meaning
=================  =====================================  ===========================================
sink_mass          [batch, layer, head, query_pos]        attention on position 0
learned_sink_mass  [batch, layer, head, query_pos]        the row's share taken by a learned sink logit (gpt-oss
                                                          only); every other row statistic is over the real keys,
                                                          whose attention then sums to 1 minus it
sink_mass_k        [batch, layer, head, query_pos]        attention on positions 0..sink_k-1
entropy            [batch, layer, head, query_pos]        -sum_j p log p of the row (nats)
entropy_norm       [batch, layer, head, query_pos]        entropy / ln(number of visible keys)
received           [batch, layer, head, key_pos]          column sum of attention over valid queries
visible            [batch, layer, key_pos]                number of valid queries that can see the key
distance           [batch, layer, head, query_pos]        mean attention distance sum_j p (i - j)
waad               [batch, layer, head, query_pos]        sum_j p min(i - j, window)
topk_idx/topk_val  [batch, layer, head, query_pos, k]     the k most attended keys and their weights
prev_token         [batch, layer, head, query_pos]        attention on key i-1
diag_mass          [batch, layer, head, query_pos]        attention on key i (itself)
dup_token          [batch, layer, head, query_pos]        attention on earlier keys with the same token
induction          [batch, layer, head, query_pos]        attention on keys whose previous token equals token i
pooled             [batch, layer, head, P, P]             block-mean pattern for display (pool factor in meta)
value_norm         [batch, layer, head, key_pos]          ||W_O^h v_j||: value vector after the head's output projection
resid_norm         [batch, layer, pos]                    ||h_j|| of the residual stream after each block
massive_val        [batch, layer, 3]                      the three largest |h| entries in the layer's output
massive_pos/_dim   [batch, layer, 3]                      their position and hidden dimension
massive_median     [batch, layer]                         median |h| of the layer's output
=================  =====================================  ===========================================

Positions are absolute and right-padded: ``lengths[b]`` tokens are real, the rest is
padding, and padding never enters a statistic (its entries are 0). Full patterns, when
asked for, live in ``patterns[(layer, head)]`` as ``[batch, query_pos, key_pos]`` for
the query window recorded in ``meta["pattern_window"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

TENSORS = "tensors.safetensors"
SIDECAR = "capture.json"


@dataclass
class Capture:
    tokens: torch.Tensor  # [batch, pos] token ids, right-padded
    lengths: torch.Tensor  # [batch] number of real tokens per input
    str_tokens: list[list[str]]  # per input, only the real tokens
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    patterns: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    resid: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [batch, pos, d_model]
    logits: torch.Tensor | None = None  # [batch, vocab] at each input's last real token
    meta: dict = field(default_factory=dict)

    @property
    def n_inputs(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_layers(self) -> int:
        return self.meta["n_layers"]

    @property
    def n_heads(self) -> int:
        return self.meta["n_heads"]

    def __repr__(self) -> str:
        stats = ", ".join(sorted(self.stats))
        return (
            f"Capture({self.meta.get('model', '?')}: {self.n_inputs} input(s), lengths {self.lengths.tolist()[:8]}, "
            f"backend={self.meta.get('backend')}, stats=[{stats}], patterns={len(self.patterns)}, "
            f"resid layers={sorted(self.resid)})"
        )

    def alpha(self) -> torch.Tensor:
        """Mean attention each key receives from the queries that see it (METHODS sec. 1): [batch, layer, head, key_pos]."""
        visible = self.stats["visible"].unsqueeze(2)
        return torch.where(visible > 0, self.stats["received"] / visible.clamp(min=1), torch.zeros(()))

    def save(self, directory: str | Path) -> Path:
        """Write ``tensors.safetensors`` and ``capture.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"tokens": self.tokens, "lengths": self.lengths}
        tensors.update({f"stats.{k}": v for k, v in self.stats.items()})
        tensors.update({f"pattern.{l}.{h}": v for (l, h), v in self.patterns.items()})
        tensors.update({f"resid.{l}": v for l, v in self.resid.items()})
        if self.logits is not None:
            tensors["logits"] = self.logits
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / TENSORS))
        (directory / SIDECAR).write_text(json.dumps({"str_tokens": self.str_tokens, "meta": self.meta}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Capture:
        """Read a Capture written by ``save``. Only tensors and JSON are read: nothing is unpickled."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / TENSORS).is_file() or not (directory / SIDECAR).is_file():
            raise FileNotFoundError(f"{directory} is not a saved Capture (needs {TENSORS} and {SIDECAR})")
        tensors = load_file(str(directory / TENSORS))
        side = json.loads((directory / SIDECAR).read_text())
        cap = cls(tokens=tensors.pop("tokens"), lengths=tensors.pop("lengths"), str_tokens=side["str_tokens"],
                  logits=tensors.pop("logits", None), meta=side["meta"])
        for name, t in tensors.items():
            kind, _, rest = name.partition(".")
            if kind == "stats":
                cap.stats[rest] = t
            elif kind == "pattern":
                layer, head = rest.split(".")
                cap.patterns[(int(layer), int(head))] = t
            elif kind == "resid":
                cap.resid[int(rest)] = t
        return cap
