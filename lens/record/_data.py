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
topk_idx/topk_val  [batch, layer, head, query_pos, k]     the k most attended keys and their weights (topk_idx
                                                          int64, int32 when captured on CUDA; -1 = no key)
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lens.model import DIGEST_NAMES, WRITTEN_DIGEST, file_digest, recorded_digest, same_digest
from lens.record._vocab import CAPTURE_STATS

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
        """Size of the attention statistics' layer axis: the captured attention layers."""
        return self.meta["n_layers"]

    @property
    def blocks(self) -> tuple[int, ...]:
        """The block number of each entry of the attention statistics' layer axis.

        Every block in most models; in a hybrid model (attention in some blocks only) the
        blocks that have attention, e.g. (3, 7, 11). Findings, figures and the dashboard
        name layers by these numbers. Residual statistics (``resid_norm``, ``massive_*``)
        have one entry per block instead (``n_blocks``).
        """
        return tuple(self.meta.get("blocks", range(self.n_layers)))

    @property
    def n_blocks(self) -> int:
        """The model's decoder blocks: the layer axis of the residual statistics."""
        return self.meta.get("n_blocks", self.n_layers)

    def layer_index(self, block: int) -> int:
        """Where block ``block`` sits on the attention statistics' layer axis; a block without attention raises."""
        try:
            return self.blocks.index(block)
        except ValueError:
            model = self.meta.get("model", "?")
            if not isinstance(block, int) or not 0 <= block < self.n_blocks:
                raise ValueError(f"layer {block!r} does not exist in this capture of {model}: layers are "
                                 f"0..{self.n_blocks - 1}") from None
            raise ValueError(f"block {block} has no attention in this capture of {model}: "
                             f"the blocks with attention are {list(self.blocks)}") from None

    @property
    def n_heads(self) -> int:
        return self.meta["n_heads"]

    def __repr__(self) -> str:
        stats = ", ".join(sorted(self.stats))
        return (
            f"Capture({self.meta.get('model', '?')}: {self.n_inputs} input(s), lengths {self.lengths.tolist()[:8]}, "
            f"{self._placement()}, "
            f"{f'attention in blocks {list(self.blocks)} of {self.n_blocks}, ' if self.n_blocks != self.n_layers else ''}"
            f"stats=[{stats}], patterns={len(self.patterns)}, "
            f"resid layers={sorted(self.resid)})"
        )

    def _placement(self) -> str:
        backend = self.meta.get("backend")
        ran = self.meta.get("backends_run")
        if ran and ran != [backend]:
            backend = f"{backend} -> {'/'.join(ran)}"
        where = ", ".join(self.meta[k] for k in ("device", "dtype") if self.meta.get(k))
        return f"backend={backend}" + (f", {where}" if where else "")

    def alpha(self) -> torch.Tensor:
        """Mean attention each key receives from the queries that see it (METHODS sec. 1): [batch, layer, head, key_pos]."""
        visible = self.stats["visible"].unsqueeze(2)
        return torch.where(visible > 0, self.stats["received"] / visible.clamp(min=1), torch.zeros(()))

    def save(self, directory: str | Path) -> Path:
        """Write ``tensors.safetensors`` and ``capture.json`` into ``directory``.

        The JSON records the tensor file's size and xxh3-128 digest, so ``load`` can tell a
        file that was truncated or changed after the save from the one written here.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"tokens": self.tokens, "lengths": self.lengths}
        tensors.update({f"stats.{k}": v for k, v in self.stats.items()})
        tensors.update({f"pattern.{l}.{h}": v for (l, h), v in self.patterns.items()})
        tensors.update({f"resid.{l}": v for l, v in self.resid.items()})
        if self.logits is not None:
            tensors["logits"] = self.logits
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / TENSORS))
        check = {TENSORS: {"bytes": (directory / TENSORS).stat().st_size,
                           WRITTEN_DIGEST: file_digest(directory / TENSORS)}}
        side = {"str_tokens": self.str_tokens, "meta": self.meta, "checksums": check}
        (directory / SIDECAR).write_text(json.dumps(side, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Capture:
        """Read a Capture written by ``save``. Only tensors and JSON are read: nothing is unpickled.

        Fails with ``CaptureFileError`` naming the file when a file is missing, is not what
        ``save`` wrote (checksum), cannot be parsed, or when the JSON and the tensors disagree.
        """
        directory = Path(directory)
        missing = [f for f in (TENSORS, SIDECAR) if not (directory / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a saved Capture (needs {TENSORS} and {SIDECAR}; "
                                    f"missing {', '.join(missing)}): pass a directory written by Capture.save")
        try:
            side = json.loads((directory / SIDECAR).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CaptureFileError(f"{directory / SIDECAR} is not valid JSON ({err}): the file was changed or cut "
                                   "short after the save; re-capture, or copy both files from the original") from None
        if not isinstance(side, dict) or "meta" not in side or "str_tokens" not in side:
            raise CaptureFileError(f"{directory / SIDECAR} is not a Capture sidecar (needs 'str_tokens' and 'meta'); "
                                   "re-capture, or copy both files from the original save")
        _verify(directory / TENSORS, side.get("checksums", {}).get(TENSORS))
        try:
            tensors = load_file(str(directory / TENSORS))
        except SafetensorError as err:
            raise CaptureFileError(f"{directory / TENSORS} cannot be read ({err}): the file is truncated or "
                                   "damaged; re-capture, or copy it again from the original save") from None
        for key in ("tokens", "lengths"):
            if key not in tensors:
                raise CaptureFileError(f"{directory / TENSORS} holds no {key!r} tensor: not written by Capture.save; "
                                       "re-capture")
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
        _check_consistent(cap, directory)
        return cap


class CaptureFileError(ValueError):
    """A saved Capture that cannot be trusted: damaged, changed after the save, or inconsistent."""


# From the registry (lens.record._vocab): statistics without a head axis ([batch, layer, ...]; every other one
# is [batch, layer, head, ...]), and the residual-stream ones, with one entry per decoder block (axis "block";
# the attention ones have one per attention layer).
_PER_BLOCK = {n for n, s in CAPTURE_STATS.items() if "block" in s.axes.split()}
_NO_HEAD_AXIS = {n for n, s in CAPTURE_STATS.items() if "head" not in s.axes.split()}


def _verify(path: Path, recorded: dict | None) -> None:
    """Compare the tensor file with the size and digest that ``save`` recorded (older saves have none).

    Saves since the switch record xxh3-128, older ones SHA-256: each is checked with its own. The bytes
    are hashed once per process while the file's stamp is unchanged (``lens.model._cache.same_digest``).
    """
    if not recorded:
        return
    size = path.stat().st_size
    if size != recorded.get("bytes"):
        what = "truncated" if size < recorded.get("bytes", 0) else "changed"
        raise CaptureFileError(f"{path} was {what} after it was saved: {size} bytes, {recorded.get('bytes')} at save "
                               f"(recorded in {SIDECAR}); re-capture, or copy it again from the original save")
    name = recorded_digest(recorded)
    if name is None:
        raise CaptureFileError(f"{path}: {SIDECAR} records its size but no digest this version knows "
                               f"({', '.join(sorted(recorded))}); re-capture, or copy both files from the original save")
    if not same_digest(path, name, recorded[name]):
        raise CaptureFileError(f"{path} was changed after it was saved: its content hash ({DIGEST_NAMES[name]}) "
                               f"differs from the one recorded in {SIDECAR}; re-capture, or copy it again from the "
                               "original save")


def _check_consistent(cap: Capture, directory: Path) -> None:
    """The JSON (str_tokens, meta) and the tensors must describe the same capture."""
    def fail(what: str):
        raise CaptureFileError(f"{directory}: {what}: {SIDECAR} and {TENSORS} come from different captures or were "
                               "edited; re-capture, or copy both files from the same save")

    b = cap.tokens.shape[0]
    if cap.tokens.ndim != 2 or cap.lengths.shape != (b,):
        fail(f"tokens {tuple(cap.tokens.shape)} and lengths {tuple(cap.lengths.shape)} "
             "are not [batch, pos] and [batch]")
    if len(cap.str_tokens) != b:
        fail(f"{SIDECAR} has str_tokens for {len(cap.str_tokens)} input(s), the tensors hold {b}")
    for i, (toks, n) in enumerate(zip(cap.str_tokens, cap.lengths.tolist())):
        if len(toks) != n or n > cap.tokens.shape[1]:
            fail(f"input {i}: {SIDECAR} has {len(toks)} str_tokens, lengths says {n} "
                 f"(tokens width {cap.tokens.shape[1]})")
    n_layers, n_heads = cap.meta.get("n_layers"), cap.meta.get("n_heads")
    for name, t in cap.stats.items():
        if t.shape[0] != b:
            fail(f"stats.{name} has batch {t.shape[0]}, tokens has {b}")
        axes = CAPTURE_STATS[name].axes if name in CAPTURE_STATS else None
        if axes is not None and t.ndim != len(axes.split()):
            fail(f"stats.{name} has {t.ndim} dims, a capture's {name} is [{axes.replace(' ', ', ')}]")
        per_block = name in _PER_BLOCK and cap.n_blocks != n_layers  # residual statistics of a hybrid model
        layers, key = (cap.n_blocks, "n_blocks") if per_block else (n_layers, "n_layers")
        if layers is not None and t.ndim > 1 and t.shape[1] != layers:
            fail(f"stats.{name} has {t.shape[1]} layers, meta says {key} = {layers}")
        if n_heads is not None and name not in _NO_HEAD_AXIS and t.ndim > 2 and t.shape[2] != n_heads:
            fail(f"stats.{name} has {t.shape[2]} heads, meta says n_heads = {n_heads}")
    if n_layers is not None and len(cap.blocks) != n_layers:
        fail(f"meta names {len(cap.blocks)} attention blocks {list(cap.blocks)} for n_layers = {n_layers}")
    for l, h in cap.patterns:
        if (n_layers is not None and l not in cap.blocks) or (n_heads is not None and not 0 <= h < n_heads):
            fail(f"pattern.{l}.{h} names a head outside meta's blocks {list(cap.blocks)} x {n_heads} heads")
    for key, t in [*((f"pattern.{l}.{h}", v) for (l, h), v in cap.patterns.items()),
                   *((f"resid.{l}", v) for l, v in cap.resid.items()),
                   *([("logits", cap.logits)] if cap.logits is not None else [])]:
        if t.shape[0] != b:
            fail(f"{key} has batch {t.shape[0]}, tokens has {b}")
