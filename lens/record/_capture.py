"""``lens.capture``: one forward pass per batch that records per-head statistics.

The model's attention runs through ``kernels.attention`` (see ``lens.model._routing``), which
returns each layer's output *and* the statistics asked for, and applies the edits asked
for, in one pass. Residual-stream quantities come from forward hooks on the blocks,
registered for the pass and removed after it, also on error.

On CUDA each layer's statistics leave the device as soon as the layer is done, into pinned
host memory (asynchronous copies, one synchronisation before the batch is assembled, which
is also when the NaN/inf check of every layer is read), with
``topk_idx`` as int32: the device then holds the model and one layer's work, not every
layer's statistics (issue 15: 15 GB above the model for SmolLM2 at 128K when they stayed).
The small residual-stream statistics follow once the batch is done, so every statistic of
a Capture lives on the host, full patterns too (``resid`` stays where the model ran). On a
CPU nothing moves and ``topk_idx`` stays int64.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from importlib import metadata

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from lens.kernels import DEFAULT_STATS, Stat, pattern_rows, pool_factor
from lens.model import Subject, active, compile_edits, normalise_inputs, routed
from lens.record._data import Capture
from lens.record._spec import CaptureSpec
from lens.record._vocab import CAPTURE_STATS, fill_of

__all__ = ["DEFAULT_STATS", "CaptureSpec", "NonFiniteAttention", "capture", "estimate_bytes"]


class _Session:
    """Feeds each layer's attention call its options and collects what it returns."""

    def __init__(self, subject: Subject, spec: CaptureSpec, *, token_ids, query_mask, bar):
        """``spec`` as ``CaptureSpec.for_subject`` resolved it; ``token_ids``/``query_mask``: this batch's."""
        self.subject, self.spec = subject, spec
        self.token_ids, self.query_mask = token_ids, query_mask
        self.pattern_heads = _pattern_heads(spec.patterns)  # {layer: [heads]}
        self.bar = bar
        self.layers: dict[int, dict[str, torch.Tensor]] = {}
        self._compiled: dict[int, dict] = {}
        self._nonfinite: list[tuple[int, tuple]] = []  # (layer, _nonfinite_summary), in call order
        self.ran: set[str] = set()  # the backends that computed (``auto`` resolves per call)

    def _edits_for(self, layer: int, n_keys: int):
        if not self.spec.edits:
            return None
        if n_keys not in self._compiled:
            s = self.subject
            self._compiled[n_keys] = compile_edits(self.spec.edits, layers=s.attn_layers, n_heads=s.n_heads,
                                                   d_v=s.d_v, n_keys=n_keys)
        return self._compiled[n_keys].get(layer)

    def attention_kwargs(self, layer, module, n_keys):
        stats, options = self.spec.stats, self.spec.options
        heads = self.pattern_heads.get(layer)
        if heads:
            stats = (*stats, "pattern")
            options = dataclasses.replace(options, pattern_heads=list(heads))
        kw = dict(stats=stats, options=options, backend=self.spec.backend, edits=self._edits_for(layer, n_keys))
        if self.token_ids is not None and self.token_ids.shape[-1] == n_keys:
            kw["token_ids"] = self.token_ids
        if self.query_mask is not None and self.query_mask.shape[-1] == n_keys:
            kw["query_mask"] = self.query_mask
        return kw

    def record(self, layer, module, value, result):
        # Read once the pass is done (check_finite): a check here would wait for the device every layer.
        self._nonfinite.append((layer, _nonfinite_summary(result, self.query_mask)))
        self.ran.add(result.meta.get("backend", "?"))
        home = self.token_ids.device  # with a device map, layers run on several devices: gather here
        out = {k: _off_device(k, v.detach(), home) for k, v in result.stats.items()}
        if "pooled" in out:
            out["pool_factor"] = torch.tensor(result.meta.get("pool_factor", 1))
        if self.spec.value_norm:
            norms = _value_norms(self.subject, module, value.detach(), self.query_mask)
            out["value_norm"] = _off_device("value_norm", norms, home)
        self.layers[layer] = out
        if self.bar is not None:
            self.bar.update(1)

    def check_finite(self) -> None:
        """Raise NonFiniteAttention for the first attention call of the pass (in call order,
        so the first bad layer) that had a NaN/inf on a real row; nothing this pass recorded is
        returned then. One device read for every layer."""
        if not self._nonfinite:
            return
        home = self.token_ids.device  # with a device map the layers' summaries sit on several devices
        sizes = [summary[0].numel() for _, summary in self._nonfinite]  # heads per layer may differ
        heads = torch.cat([summary[0].to(home) for _, summary in self._nonfinite]).cpu().split(sizes)
        first = torch.stack([summary[1].to(home) for _, summary in self._nonfinite]).tolist()
        for n, (layer, summary) in enumerate(self._nonfinite):
            if heads[n].any():
                _raise_nonfinite(self.subject, layer, first[n], summary[2], heads[n])


def _off_device(name: str, t: torch.Tensor, home: torch.device) -> torch.Tensor:
    """One layer's statistic where the capture keeps it: on CUDA a pinned host copy, filled
    asynchronously (read only after ``_host_ready``), ``topk_idx`` as int32; elsewhere on ``home``."""
    if t.device.type != "cuda":
        return t.to(home)
    if name == "topk_idx":
        t = t.to(torch.int32)  # key positions < 2^31; half the bytes
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _host_ready(device: torch.device) -> None:
    """Wait for the asynchronous device-to-host copies of ``_off_device``."""
    if device.type == "cuda":  # with a device map, layers ran on several GPUs
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


class NonFiniteAttention(ValueError):
    """The model's attention produced NaN or inf on a real token: no statistic is computed from it."""


def _nonfinite_summary(result, query_mask) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """Where one layer's attention is NaN/inf on a real row, left on the device (no sync):
    (bad heads [h] bool, flat index of the first bad (input, head, position) in that order,
    the [b, h, q] shape it indexes).

    The log-sum-exp is NaN or +inf when a score is (an fp16 overflow, NaN weights), and the
    output is non-finite when the values are; padded rows are skipped, and -inf (a row that
    sees no key) is left to the kernels. One pass over [b, h, q] and [b, h, q, d] per layer.
    """
    lse, out = result.lse, result.output
    bad = ~torch.isfinite(out).all(-1)
    if lse is not None:
        bad = bad | torch.isnan(lse) | torch.isposinf(lse)
    if query_mask is not None and query_mask.shape[-1] == bad.shape[-1]:
        bad = bad & query_mask.to(bad.device)[:, None, :]
    return bad.any(2).any(0), bad.flatten().to(torch.uint8).argmax(), tuple(bad.shape)


def _raise_nonfinite(subject: Subject, layer: int, first: int, shape: tuple[int, int, int],
                     bad_heads: torch.Tensor) -> None:
    """The error for a layer whose attention had NaN/inf: the layer, head, input and query
    position of its first bad entry, and every bad head of the layer."""
    _, h, q = shape
    b, rest = divmod(first, h * q)
    head, pos = divmod(rest, q)
    heads = bad_heads.nonzero().flatten().tolist()
    raise NonFiniteAttention(
        f"{subject.name}: layer {layer}, head {head} produced NaN/inf attention (input {b}, query position {pos}; "
        f"bad heads in this layer: {heads}): no statistics were recorded from it. The scores overflowed or the "
        "weights hold NaN/inf: load the model in float32 or bfloat16 instead of float16, or check its weights")


def _value_norms(subject: Subject, module, value: torch.Tensor, query_mask) -> torch.Tensor:
    """||W_O^h v_j|| per head and position, via the Gram matrix W_O^h^T W_O^h (METHODS sec. 2)."""
    o_proj = subject.o_proj(subject.layer_of(module))
    weight = o_proj.weight.detach().float()
    h, d = subject.n_heads, subject.d_v
    # W_O^h maps the head's d_head slice to d_model: [d_model, d_head] per head.
    w = weight.T if subject.arch.o_proj_conv1d else weight  # [d_model, h*d]
    w = w.reshape(w.shape[0], h, d).permute(1, 0, 2)  # [h, d_model, d]
    gram = w.transpose(1, 2) @ w  # [h, d, d]
    kv_of_head = torch.arange(h) // (h // value.shape[1])
    v = value.float()[:, kv_of_head]  # [b, h, n, d]
    sq = torch.einsum("bhnd,hde,bhne->bhn", v, gram, v).clamp(min=0)
    norms = sq.sqrt()
    if query_mask is not None and query_mask.shape[-1] == norms.shape[-1]:
        norms = norms * query_mask.to(norms.device)[:, None, :]
    return norms


def _block_hooks(subject: Subject, fn):
    """``fn(layer)``'s hook at every block's ``resid_post`` site, for the block (``Subject.hooks``)."""
    return subject.hooks({("resid_post", i): fn(i) for i in range(subject.n_layers)})


def _resid_recorder(store: dict, mask: torch.Tensor, resid_layers: set[int], want_norm: bool, want_massive: bool):
    def make(layer: int):
        def hook(resid, call):
            # gathered on the mask's device (with a device map, blocks live on several devices)
            hs = resid.detach().float().to(mask.device)  # [b, n, d]
            m = mask[..., None].to(hs.dtype)
            if want_norm:
                store.setdefault("resid_norm", {})[layer] = hs.norm(dim=-1) * mask
            if want_massive:
                store.setdefault("massive", {})[layer] = _massive(hs.abs() * m, mask)
            if layer in resid_layers:
                store.setdefault("resid", {})[layer] = (hs * m).clone()
        return hook

    return make


def _massive(mag: torch.Tensor, mask: torch.Tensor, k: int = 3):
    """The k largest entries of |h| [b, n, d] (padded rows 0), their position and dim, and the median.

    The k largest entries lie in the k positions with the largest row maxima, so the
    top-k runs over k * d candidates instead of n * d. The median is the lower median
    of the real positions' entries (torch.median's convention), by selection in numpy
    on a CPU (several times faster than torch's).
    """
    b, n, d = mag.shape
    k = min(k, n * d)
    rows = mag.amax(-1).topk(min(k, n), dim=-1).indices  # [b, k'] candidate positions
    cand = mag.gather(1, rows[..., None].expand(-1, -1, d)).flatten(1)  # [b, k' * d]
    val, at = cand.topk(k, dim=-1)
    pos, dim = rows.gather(1, at // d), at % d
    meds = []
    for i in range(b):
        x = (mag[i] if bool(mask[i].all()) else mag[i][mask[i]]).flatten()  # no copy without padding
        if x.device.type == "cpu":
            j = (x.numel() - 1) // 2
            meds.append(torch.as_tensor(np.partition(x.numpy(), j)[j]))
        else:
            meds.append(x.median())
    return val, pos, dim, torch.stack(meds)


def capture(subject: Subject, inputs: str | Sequence[str] | torch.Tensor | Sequence[Sequence[int]],
            spec: CaptureSpec | None = None, *, progress: bool | None = None, **fields) -> Capture:
    """Run ``subject`` on ``inputs`` and record per-head statistics (see ``Capture`` for names and shapes).

    What is recorded is a ``CaptureSpec``: pass one as ``spec``, or its fields as keywords
    (``stats``, ``patterns``, ``pattern_window``, ``resid_layers``, ``value_norm``,
    ``resid_norm``, ``massive``, ``edits``, ``backend``, ``batch_size``, ``options``,
    ``allow_beyond_context``; keywords given with ``spec`` replace its fields). An unknown
    keyword is refused by name. ``progress``: show a bar (default: several batches or a long input).
    """
    spec = CaptureSpec.of(spec, **fields).for_subject(subject)
    rows = normalise_inputs(subject, inputs, allow_beyond_context=spec.allow_beyond_context)
    _check_memory(subject, rows, spec)
    batches = [rows[i:i + spec.batch_size] for i in range(0, len(rows), spec.batch_size)]
    if progress is None:
        progress = len(batches) > 1 or max(len(r) for r in rows) >= 2048
    bar = tqdm(total=len(batches) * len(subject.attn_layers), desc=f"capture {subject.name}", unit="layer",
               disable=not progress, leave=False)
    t0 = time.perf_counter()
    try:
        done = [_capture_batch(subject, batch, spec, bar) for batch in batches]
    finally:
        bar.close()
    return _join(subject, rows, spec, done, time.perf_counter() - t0)


@dataclasses.dataclass
class _Batch:
    """What one forward pass recorded, on the host: statistics [batch, layer, ...], kept patterns and residuals."""

    stats: dict[str, torch.Tensor]
    patterns: dict[tuple[int, int], torch.Tensor]
    resid: dict[int, torch.Tensor]
    logits: torch.Tensor  # [batch, vocab] at each input's last real token
    ran: set[str]  # the backends that computed


def _capture_batch(subject: Subject, batch: list[list[int]], spec: CaptureSpec, bar) -> _Batch:
    """One forward pass over ``batch`` (rows of ids, right-padded here) with attention routed and the blocks hooked."""
    pad, device = subject.pad_token_id, subject.device
    width = max(len(r) for r in batch)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], dtype=torch.long, device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], dtype=torch.bool, device=device)
    session = _Session(subject, spec, token_ids=ids, query_mask=mask, bar=bar)
    store: dict = {}
    hook = _resid_recorder(store, mask, set(spec.resid_layers), spec.resid_norm, spec.massive)
    with torch.no_grad(), routed(subject.model), active(session), _block_hooks(subject, hook):
        # Only the last real position's logits: the full [pos, vocab] block is huge at long context.
        last = mask.sum(1, keepdim=True) - 1
        logits = subject.model(input_ids=ids, attention_mask=mask.long() if not mask.all() else None,
                               use_cache=False, logits_to_keep=last).logits
    logits = logits[:, -1].float().cpu()
    _host_ready(device)
    session.check_finite()
    stats = _assemble_batch(session.layers, store, subject.attn_layers, subject.n_layers)
    if device.type == "cuda":  # the residual-stream statistics join the attention ones on the host
        stats = {name: t.cpu() for name, t in stats.items()}
    heads = session.pattern_heads
    patterns = {(l, h): session.layers[l]["pattern"][:, heads[l].index(h)] for l, h in spec.patterns}
    return _Batch(stats, patterns, {l: store["resid"][l] for l in spec.resid_layers}, logits, session.ran)


def _join(subject: Subject, rows: list[list[int]], spec: CaptureSpec, batches: list[_Batch],
          seconds: float) -> Capture:
    """The batches joined along the batch axis (padded with each statistic's fill) into one Capture."""
    stats = {name: _cat_padded([b.stats[name] for b in batches], fill=fill_of(name)) for name in batches[0].stats}
    stats.pop("pattern", None)
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [subject.pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)
    ran = set().union(*(b.ran for b in batches))
    meta = {
        "model": subject.name, "source": subject.source, "n_layers": len(subject.attn_layers),
        "blocks": list(subject.attn_layers), "n_blocks": subject.n_layers, "n_heads": subject.n_heads,
        "n_kv_heads": subject.n_kv_heads, "d_head": subject.d_head, "d_v": subject.d_v, "d_model": subject.d_model,
        "prepends_bos": subject.prepends_bos, "backend": spec.backend, "backends_run": sorted(ran),
        "device": str(subject.device), "dtype": str(subject.model.dtype).removeprefix("torch."),
        "stats": list(spec.stats), "options": _options_dict(spec.options), "edits": [repr(e) for e in spec.edits],
        "pattern_window": spec.pattern_window, "seconds": seconds, "versions": _versions(),
    }
    return Capture(
        tokens=tokens, lengths=torch.tensor([len(r) for r in rows]),
        str_tokens=[[subject.tokenizer.decode([t]) for t in r] for r in rows],
        stats=stats,
        patterns={k: _cat_padded([b.patterns[k] for b in batches]) for k in spec.patterns},
        resid={l: _cat_padded([b.resid[l] for b in batches]) for l in spec.resid_layers},
        logits=torch.cat([b.logits for b in batches]),
        meta=meta,
    )


def _pattern_heads(patterns: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """(layer, head) pairs grouped by layer: {layer: [heads]} in the order given."""
    out: dict[int, list[int]] = {}
    for l, h in patterns:
        out.setdefault(l, []).append(h)
    return out


def available_bytes(device: torch.device) -> int:
    """Memory free for the capture's results where they are kept: host RAM, or the GPU's free memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def estimate_bytes(subject: Subject, rows: list[list[int]], spec: CaptureSpec) -> dict[str, int]:
    """Bytes the returned Capture will hold, by part, known before any forward pass.

    ``spec`` as ``CaptureSpec.for_subject`` resolves it. A lower bound: it counts the results
    (each statistic's registry shape and dtype), not the transient attention of one layer nor
    the copy made when batches are joined.
    """
    if not spec.resolved:
        raise ValueError("estimate_bytes counts a resolved spec: pass spec.for_subject(subject)")
    b, n, opt = len(rows), max(len(r) for r in rows), spec.options
    side = -(-n // pool_factor(n, n, opt.pool_max))
    sizes = {"batch": b, "layer": len(subject.attn_layers), "block": subject.n_layers, "head": subject.n_heads,
             "query_pos": n, "key_pos": n, "pos": n, "topk": opt.topk, "pool_q": side, "pool_k": side}
    kept = [*spec.stats, *["value_norm"] * spec.value_norm, *["resid_norm"] * spec.resid_norm]
    start, stop = pattern_rows(n, opt)
    return {"statistics": sum(_nbytes(CAPTURE_STATS[name], sizes) for name in kept),
            "patterns": len(spec.patterns) * b * (stop - start) * n * 4,
            "resid": len(spec.resid_layers) * b * n * subject.d_model * 4}


def _nbytes(stat: Stat, sizes: dict[str, int]) -> int:
    return math.prod(sizes[axis] for axis in stat.axes.split()) * stat.dtype.itemsize


def _check_memory(subject: Subject, rows: list[list[int]], spec: CaptureSpec) -> None:
    """Refuse, before the model runs, a capture whose results alone exceed the memory available."""
    parts = estimate_bytes(subject, rows, spec)
    need, have = sum(parts.values()), available_bytes(subject.device)
    if need <= have:
        return
    b, n = len(rows), max(len(r) for r in rows)
    detail = ", ".join(f"{k} {_size(v)}" for k, v in parts.items() if v)
    raise MemoryError(
        f"this capture would keep about {_size(need)} ({detail}; {b} input(s) of up to {n} tokens, "
        f"{len(spec.patterns)} full pattern(s)), but {_size(have)} is available on {subject.device.type}: "
        "nothing was run. Ask for the block-pooled map with stats=['pooled'] instead of full patterns, fewer "
        "heads with patterns=[(layer, head), ...], a query window with pattern_window=(start, stop), fewer "
        "resid_layers, or shorter or fewer inputs")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"  # decimal units


def _assemble_batch(layers: dict[int, dict], store: dict, attn_layers: Sequence[int],
                    n_blocks: int) -> dict[str, torch.Tensor]:
    """Stack per-layer results into [batch, layer, ...] tensors: attention statistics over the blocks
    with attention (``attn_layers``, block numbers), residual ones over every block."""
    out: dict[str, torch.Tensor] = {}
    first = layers[attn_layers[0]]
    names = [k for k in first if k != "pattern"]
    for name in names:
        per_layer = [layers[l][name] for l in attn_layers]
        if name == "pool_factor":  # one number per layer, given to every input of the batch
            b = first["pooled"].shape[0]
            out[name] = torch.stack(per_layer)[None].expand(b, -1).clone()
            continue
        out[name] = _stack_padded(per_layer, dim=1, fill=fill_of(name))
    if "resid_norm" in store:
        out["resid_norm"] = torch.stack([store["resid_norm"][l] for l in range(n_blocks)], dim=1)
    if "massive" in store:
        vals = [store["massive"][l] for l in range(n_blocks)]
        out["massive_val"] = torch.stack([v[0] for v in vals], dim=1)
        out["massive_pos"] = torch.stack([v[1] for v in vals], dim=1)
        out["massive_dim"] = torch.stack([v[2] for v in vals], dim=1)
        out["massive_median"] = torch.stack([v[3] for v in vals], dim=1)
    return out


def _pad_to(t: torch.Tensor, shape: Sequence[int], fill: float = 0) -> torch.Tensor:
    pads = []
    for have, want in zip(reversed(t.shape), reversed(shape)):
        pads += [0, want - have]
    return torch.nn.functional.pad(t, pads, value=fill) if any(pads) else t


def _stack_padded(tensors: list[torch.Tensor], dim: int, fill: float = 0) -> torch.Tensor:
    shape = [max(s) for s in zip(*(t.shape for t in tensors))]
    return torch.stack([_pad_to(t, shape, fill) for t in tensors], dim=dim)


def _cat_padded(tensors: list[torch.Tensor], fill: float = 0) -> torch.Tensor:
    """Concatenate along batch, padding every other dimension to the largest (padding = ``fill``)."""
    if len(tensors) == 1:  # one batch: nothing to join (a copy of every statistic otherwise)
        return tensors[0]
    shape = [max(s) for s in zip(*(t.shape for t in tensors))]
    return torch.cat([_pad_to(t, [t.shape[0], *shape[1:]], fill) for t in tensors], dim=0)


def _options_dict(options) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()}


def _versions() -> dict:
    out = {}
    for dist in ("attention-workbench", "torch", "transformers", "transformer-lens", "nnsight"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
