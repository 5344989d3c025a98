"""A census of every causal LM in the installed transformers: does ``lens.capture`` reproduce it exactly?

    python docs/census.py                       # every model type, summary on stdout
    python docs/census.py --only llama mpt      # some model types
    python docs/census.py --json census.json    # also write the outcomes as JSON
    python docs/census.py --write-readme        # also rewrite the README's census section
    python docs/census.py --from census.json --write-readme   # the README from a saved run

Every ``model_type`` in transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` is built as a tiny
random model from its config class's *defaults*, shrunk generically (by attribute names, no
table per architecture; see ``shrink``): few layers, with per-layer lists (``layer_types``,
block-type lists, lists of layer indices, leading dense layers, periods of hybrid patterns)
cut down consistently so that every kind of layer the default has is kept; hidden size 64;
4 query heads over 2 key/value heads (1 for MQA, 4 where the default has no grouping); head
and latent sizes divided by 8; 4 experts, 2 per token; 80 token ids with the special ids
moved into them; windows and attention chunks of 5 (shorter than the inputs). Weights get a
fixed seed and are scaled up as in ``tests/_tiny_archs.py`` (peaked attention), fp32, eval mode.

Each model type gets exactly one outcome:

* ``exact``: ``lens.Subject`` accepts the model, routed logits equal its stock logits (atol
  1e-4), and every statistic of ``lens.capture`` (eager and chunked backends) equals the one
  computed from the model's *own* eager ``output_attentions`` pattern (atol 1e-5, as in
  ``tests/test_architectures.py``) on a padded batch (rows of 13 and 9 tokens) longer than any
  sliding window;
* ``refused``: the workbench refused it by name (``StructureError``, ``UnsupportedAttention`` or
  another ``ValueError`` raised inside ``lens``); the detail is the message's first sentence;
* ``wrong``: accepted, but a statistic (or the routed logits) differs: which, and by how much;
* ``not built``: the tiny model could not be built or run here (config or model construction
  fails, the model's own eager forward fails, it returns no attention weights, time limit);
* ``crash``: the workbench raised a raw exception (not a refusal): a bug.

The README section between ``<!-- census:start -->`` and ``<!-- census:end -->`` is written by
``--write-readme`` from a run, with the transformers version and the date; never by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- census:start -->", "<!-- census:end -->"
OUTCOMES = ("exact", "refused", "wrong", "not built", "crash")

VOCAB = 80  # token ids 0..79: inputs use 0..11, specials are moved to 64..79
BOS, PAD, EOS = 64, 65, 66
HIDDEN = 64
HEADS = 4
MIN_LAYERS, MAX_LAYERS = 3, 6
WINDOW = 5  # windows and attention chunks: shorter than both input rows
MAX_POSITIONS = 128
LENGTHS = (13, 9)  # a padded batch
ATOL = 1e-5
LOGITS_ATOL = 1e-4
SEED = 0
TIME_LIMIT = 60  # seconds per model type

# --- generic attribute-name groups (no table per architecture) ------------------------------
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "num_decoder_layers")
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "model_dim")
HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads",
             "attention_heads", "num_decoder_attention_heads")
KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num", "num_query_groups",
           "n_head_kv")
HEAD_DIM_KEYS = ("head_dim", "d_head", "attention_head_dim", "kv_channels", "attention_head_size", "dim_head")
TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k", "n_activated_experts",
             "moe_top_k", "num_selected_experts")
GROUP_KEYS = ("n_group", "topk_group", "num_expert_group", "n_expert_groups", "moe_n_group", "moe_topk_group")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length", "context_length",
                 "max_sequence_length", "max_target_positions")
LEADING_COUNT = re.compile(r"^(first_k_dense_replace|num_dense_layers|n_dense_layers|first_k_dense|"
                           r"num_leading_dense_layers|moe_layer_start_index|dense_layers)$")
TRAILING_COUNT = re.compile(r"^(num_kv_shared_layers)$")
PERIOD = re.compile(r"(_period|_interval|every_n_layers|sliding_window_pattern|^_sliding_window_pattern)$")
OFFSET = re.compile(r"_offset$")
WINDOW_NAME = re.compile(r"(window|attention_chunk_size|local_attention$)")
TOKEN_ID = re.compile(r"(token_id|token_index|_token_ids|^eod_id|_token$)")


def _even(x: float, lo: int = 4, hi: int = 32) -> int:
    return int(max(lo, min(hi, 2 * round(x / 2))))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fields(cls) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


def _attrs(cfg) -> dict:
    """The config's attributes: dataclass fields and what ``__post_init__`` derived from them."""
    out = {k: v for k, v in vars(cfg).items() if not k.startswith("__")}
    for k in _fields(type(cfg)):
        if k not in out and hasattr(cfg, k):
            with contextlib.suppress(Exception):
                out[k] = getattr(cfg, k)
    return out


# --- layers -----------------------------------------------------------------------------------
def _layer_plan(attrs: dict, n: int) -> tuple[list[int], dict]:
    """Which of the default's ``n`` layers to keep, and the per-layer attributes rewritten for them.

    Per-layer lists (length ``n``), lists of layer indices, leading/trailing layer counts and
    layer periods are read as one signature per layer; the kept layers cover every signature
    (every kind of layer the default has: attention and linear/SSM blocks, dense and MoE, local
    and global, shared KV), then fill up to ``MIN_LAYERS`` from the start.
    """
    per_layer, index_lists, leading, trailing = {}, {}, {}, {}
    for k, v in attrs.items():
        if k.startswith("_") and k != "_sliding_window_pattern":
            continue
        if isinstance(v, (list, tuple)) and len(v) == n and n > 1 and all(not isinstance(x, (list, dict)) for x in v):
            per_layer[k] = list(v)
        elif (isinstance(v, (list, tuple)) and v and all(_is_int(x) and 0 <= x < n for x in v)
              and list(v) == sorted(set(v)) and len(v) < n and re.search(r"layer|idx|ids", k)
              and not TOKEN_ID.search(k)):
            index_lists[k] = set(v)
        elif _is_int(v) and LEADING_COUNT.match(k) and 0 < v <= n:
            leading[k] = v
        elif _is_int(v) and TRAILING_COUNT.match(k) and 0 < v < n:
            trailing[k] = v

    def categorical(values) -> bool:  # a kind of layer, not a per-layer number like a rope theta
        return len(set(map(repr, values))) <= 8

    keys = [k for k, v in per_layer.items() if categorical(v)]
    sig = [tuple(repr(per_layer[k][i]) for k in keys)
           + tuple(i in s for s in index_lists.values())
           + tuple(i < c for c in leading.values())
           + tuple(i >= n - c for c in trailing.values()) for i in range(n)]
    keep: list[int] = []
    for i in range(n):  # the first layer of each kind
        if sig[i] not in {sig[j] for j in keep}:
            keep.append(i)
    for i in range(n):
        if len(keep) >= MIN_LAYERS:
            break
        if i not in keep:
            keep.append(i)
    keep = sorted(keep)[:MAX_LAYERS] if len(keep) > MAX_LAYERS else sorted(keep)
    if trailing:  # shared-KV layers must come after the layers they read from
        keep = sorted(set(keep))
    new = {k: [v[i] for i in keep] for k, v in per_layer.items()}
    new.update({k: [j for j, i in enumerate(keep) if i in s] for k, s in index_lists.items()})
    new.update({k: sum(i < c for i in keep) for k, c in leading.items()})
    new.update({k: sum(i >= n - c for i in keep) for k, c in trailing.items()})
    return keep, new


# --- the shrink -----------------------------------------------------------------------------------
def shrink(cfg, *, hidden: int = HIDDEN, top: bool = True):
    """A config of the same class with small sizes: ``cfg``'s values, generically cut down by attribute name."""
    cls = type(cfg)
    attrs = _attrs(cfg)
    fields = _fields(cls)
    over: dict = {}

    old_hidden = next((attrs[k] for k in HIDDEN_KEYS if _is_int(attrs.get(k))), None)
    old_heads = next((attrs[k] for k in HEAD_KEYS if _is_int(attrs.get(k))), None)
    old_kv = next((attrs[k] for k in KV_KEYS if _is_int(attrs.get(k))), None)
    old_inter = next((attrs[k] for k in ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "decoder_ffn_dim")
                      if _is_int(attrs.get(k))), None)
    heads = HEADS if old_heads is None or old_heads >= HEADS else old_heads
    kv = heads if old_kv is None or old_kv == old_heads else 1 if old_kv == 1 else 2
    default_hd = old_hidden // old_heads if old_hidden and old_heads else None

    n_layers = next((attrs[k] for k in LAYER_KEYS if _is_int(attrs.get(k))), None)
    if n_layers:
        keep, layered = _layer_plan(attrs, n_layers)
        over.update(layered)
        for k in LAYER_KEYS:
            if _is_int(attrs.get(k)):
                over[k] = len(keep)
    for k, v in attrs.items():
        if k in over or k.startswith("__"):
            continue
        if isinstance(v, dict) and k.endswith("rope_parameters"):
            continue
        if _is_int(v):
            new = _shrink_int(k, v, attrs, hidden, heads, kv, old_hidden, old_heads, old_inter, default_hd)
            if new is not None and new != v:
                over[k] = new
        elif isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v) and TOKEN_ID.search(k):
            over[k] = [_token(k, x) for x in v]
        elif isinstance(v, (list, tuple)) and k == "intermediate_size":  # a per-layer list not cut above
            over[k] = [_inter(x, old_hidden, hidden) if _is_int(x) else x for x in v]
        elif _is_config(v):
            with contextlib.suppress(Exception):
                over[k] = shrink(v, hidden=hidden, top=False)
        elif isinstance(v, dict) and k.endswith("_config") and v:
            with contextlib.suppress(Exception):
                sub = _sub_config_class(cls, k)
                if sub is not None:
                    over[k] = shrink(sub(**v), hidden=hidden, top=False)
    # periods of hybrid patterns: every other layer
    periods = {k: v for k, v in attrs.items() if _is_int(v) and PERIOD.search(k) and v > 2}
    for k, v in periods.items():
        over[k] = 2
    for k, v in attrs.items():
        if _is_int(v) and OFFSET.search(k) and v >= 2 and "layer" in k:
            over[k] = v % 2
    # a sliding window flag that is on by default keeps working: nothing to do; windows cut above
    kwargs = {k: v for k, v in over.items() if k in fields}
    extra = {k: v for k, v in over.items() if k not in fields}
    new = cls(**_kept(cfg, fields, kwargs)) if top else cls(**_kept(cfg, fields, kwargs))
    for k, v in extra.items():  # derived attributes the constructor did not recompute
        with contextlib.suppress(Exception):
            if getattr(new, k, None) == attrs.get(k):
                setattr(new, k, v)
    return new


def _kept(cfg, fields: set[str], kwargs: dict) -> dict:
    """Constructor arguments: the new values, plus sub-configs the default was built with (as given)."""
    return kwargs


def _is_config(v) -> bool:
    from transformers import PretrainedConfig

    return isinstance(v, PretrainedConfig)


def _sub_config_class(cls, key: str):
    sub = getattr(cls, "sub_configs", {}) or {}
    c = sub.get(key)
    if c is None or isinstance(c, str):
        return None
    return c


def _inter(v: int, old_hidden, hidden: int) -> int:
    ratio = v / old_hidden if old_hidden else 2.0
    return int(max(16, min(192, 8 * round(ratio * hidden / 8))))


def _token(k: str, v: int) -> int:
    if 0 <= v < VOCAB:
        return v
    fixed = {"bos_token_id": BOS, "pad_token_id": PAD, "eos_token_id": EOS}
    if k in fixed:
        return fixed[k]
    return 67 + (abs(hash(k)) % (VOCAB - 67))  # another special id, inside the vocabulary


def _shrink_int(k, v, attrs, hidden, heads, kv, old_hidden, old_heads, old_inter, default_hd):
    kl = k.lower()
    if k in HIDDEN_KEYS:
        return hidden
    if k in HEAD_KEYS:
        return heads
    if k in KV_KEYS:
        return kv
    if k in HEAD_DIM_KEYS:
        return hidden // heads if v == default_hd else _even(v / 8)
    if k == "vocab_size" or (kl.endswith("vocab_size") and "type" not in kl and v > VOCAB):
        return VOCAB
    if TOKEN_ID.search(k):
        return _token(k, v)
    if k in POSITION_KEYS:
        return min(v, MAX_POSITIONS) if v > 16 else v
    if k in TOPK_KEYS:
        return min(v, 2)
    if k in GROUP_KEYS:
        return 1
    if "expert" in kl and ("inter" in kl or "ffn" in kl or "hidden" in kl):
        return _inter(v, old_hidden, hidden)
    if "expert" in kl and "shared" in kl:
        return min(v, 1)
    if "expert" in kl and v > 4 and not ("period" in kl or "offset" in kl or "layer" in kl):
        return 4
    if WINDOW_NAME.search(kl) and v > WINDOW:
        return WINDOW
    if any(s in kl for s in ("intermediate", "ffn", "ff_dim", "dim_ff", "d_ff", "inner", "feed_forward", "dff")):
        return _inter(v, old_hidden, hidden)
    if "heads" in kl:
        return (1 if v == 1 else 2) if ("kv" in kl or "key" in kl) else min(v, heads)
    if kl.endswith(("head_dim", "head_size", "_rank", "_dim", "headdim", "d_head", "_d_state", "state_size")):
        if old_hidden and v == old_hidden:
            return hidden
        return _even(v / 8)
    if old_hidden and v == old_hidden and ("size" in kl or "dim" in kl or "width" in kl):
        return hidden
    if old_inter and v == old_inter and ("size" in kl or "dim" in kl):
        return _inter(v, old_hidden, hidden)
    return None


# --- the model, its inputs, its tokenizer ---------------------------------------------------------
def tokenizer():
    """A word-level tokenizer over w0..w79 built in code (nothing is downloaded); BOS = w64."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w67"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"w{BOS} $A", special_tokens=[(f"w{BOS}", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=f"w{BOS}", eos_token=f"w{EOS}",
                                   pad_token=f"w{PAD}", unk_token="w67")


def tiny_config(model_type: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = CONFIG_MAPPING[model_type]()
    return shrink(cfg)


def build(cfg):
    """The model from ``cfg``: fixed seed, weights scaled up (peaked attention), fp32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            if p.ndim >= 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0.0, 0.2)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            if name.endswith("sinks"):
                p.copy_(torch.linspace(-1.0, 3.0, p.numel()))
    return model.float().eval()


def inputs(pad: int):
    """Two rows with repeats (13 and 9 tokens), right-padded with ``pad``, and the padding mask."""
    import torch

    g = torch.Generator().manual_seed(7)
    rows = []
    for n in LENGTHS:
        half = torch.randint(0, 12, (n // 2 + 1,), generator=g).tolist()
        rows.append((half + half)[:n])
    width = max(LENGTHS)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return rows, ids, mask


def reference_stats(patterns, windows, ids, mask) -> dict:
    """Every statistic ``[b, layer, head, ...]`` from the model's own attention patterns (as in
    ``tests/test_architectures.py``): ``patterns`` one ``[b, h, q, k]`` per layer, ``windows`` per layer."""
    import torch

    b, n = ids.shape
    qpos = torch.arange(n)[:, None]
    kpos = torch.arange(n)[None, :]
    valid = mask.bool()
    per_layer = []
    for p, window in zip(patterns, windows):
        h = p.shape[1]
        p = p.float() * valid[:, None, :, None]
        sees = (kpos <= qpos) & (qpos - kpos < window if window else True)
        n_vis = sees.sum(-1).float()
        ent = -torch.where(p > 0, p * torch.log(p), 0.0).sum(-1)
        same = ids[:, :, None] == ids[:, None, :]
        prev_same = torch.zeros_like(same)
        prev_same[..., 1:] = same[..., :-1]
        top = torch.topk(p, min(8, n), dim=-1).values
        per_layer.append({
            "sink_mass": p[..., 0], "sink_mass_k": p[..., :4].sum(-1), "entropy": ent,
            "entropy_norm": torch.where(n_vis > 1, ent / torch.log(n_vis.clamp_min(2)), 0.0),
            "received": p.sum(-2),
            "visible": (sees[None] & valid[:, :, None]).sum(-2).float()[:, None].expand(b, h, n),
            "distance": (p * (qpos - kpos)).sum(-1), "waad": (p * (qpos - kpos).clamp_max(10)).sum(-1),
            "topk_val": torch.where(top > 0, top, 0.0),
            "prev_token": torch.nn.functional.pad(torch.diagonal(p, offset=-1, dim1=-2, dim2=-1), (1, 0)),
            "diag_mass": torch.diagonal(p, dim1=-2, dim2=-1),
            "dup_token": (p * (same & (kpos < qpos))[:, None]).sum(-1),
            "induction": (p * (prev_same & (kpos >= 1) & (kpos <= qpos))[:, None]).sum(-1),
            "pooled": p,
            "learned_sink_mass": (1 - p.sum(-1)) * valid[:, None, :],
        })
    if len({d["sink_mass"].shape for d in per_layer}) != 1:
        raise _Wrong("head counts differ between layers in the model's own patterns")
    return {k: torch.stack([d[k] for d in per_layer], dim=1) for k in per_layer[0]}


# --- outcomes -------------------------------------------------------------------------------------
class _Timeout(BaseException):
    pass


class _Wrong(Exception):
    pass


class _NotBuilt(Exception):
    pass


def first_sentence(message: str, limit: int = 220) -> str:
    text = " ".join(str(message).split())
    m = re.search(r"(?<=[a-z0-9\)\]'\"`])[.;](\s|$)", text)
    if m:
        text = text[:m.start()]
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _raised_in_lens(err: BaseException) -> bool:
    tb = traceback.extract_tb(err.__traceback__)
    lens_dir = str(ROOT / "lens")
    import lens

    lens_dir = os.path.dirname(os.path.abspath(lens.__file__))
    return bool(tb) and os.path.abspath(tb[-1].filename).startswith(lens_dir)


def _workbench_error(err: BaseException, where: str) -> tuple[str, str]:
    from lens.model._routing import UnsupportedAttention
    from lens.model._structure import StructureError

    if isinstance(err, (StructureError, UnsupportedAttention)) or (isinstance(err, ValueError)
                                                                    and _raised_in_lens(err)):
        return "refused", first_sentence(str(err))
    tb = traceback.extract_tb(err.__traceback__)
    at = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return "crash", f"{where}: {type(err).__name__}: {first_sentence(str(err), 300)}{at}"


@contextlib.contextmanager
def time_limit(seconds: int):
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(model_type: str, *, time_limit_s: int = TIME_LIMIT) -> dict:
    """One model type's outcome: ``{"outcome", "detail", "seconds"}``."""
    import torch

    t0 = time.perf_counter()
    phase = ["config"]
    dtype = torch.get_default_dtype()
    try:
        with time_limit(time_limit_s), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome, detail = _check(model_type, phase)
    except _Timeout:
        outcome, detail = "not built", f"over the {time_limit_s} s limit (in {phase[0]})"
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - isolate every failure: it is this model's outcome
        outcome, detail = "crash", f"census ({phase[0]}): {type(err).__name__}: {first_sentence(str(err))}"
    finally:
        torch.set_default_dtype(dtype)
    return {"outcome": outcome, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)}


def _check(model_type: str, phase: list[str]) -> tuple[str, str]:
    import torch

    import lens
    from lens.model import _routing

    try:
        cfg = tiny_config(model_type)
    except Exception as err:
        return "not built", f"config: {type(err).__name__}: {first_sentence(str(err))}"
    phase[0] = "model"
    try:
        model = build(cfg)
    except Exception as err:
        return "not built", f"model: {type(err).__name__}: {first_sentence(str(err))}"
    tok = tokenizer()
    rows, ids, mask = inputs(PAD)

    phase[0] = "own eager forward"
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    except Exception as err:
        return "not built", f"its own eager forward fails here: {type(err).__name__}: {first_sentence(str(err))}"
    stock = getattr(out, "logits", None)
    if stock is None:
        return "not built", "its forward returns no logits"
    real = mask.bool()
    if not torch.isfinite(stock[real]).all():
        return "not built", "its own logits are not finite at these sizes"
    own = [a for a in (getattr(out, "attentions", None) or ()) if a is not None]

    phase[0] = "lens.Subject"
    try:
        s = lens.Subject(model, tok, name=f"census-{model_type}")
    except Exception as err:
        return _workbench_error(err, "lens.Subject")
    if not own:
        return "not built", ("lens accepts it, but the model returns no attention weights "
                             "(output_attentions) to check against")

    phase[0] = "routed logits"
    try:
        with torch.no_grad(), _routing.routed(s.model):
            routed = s.model(input_ids=ids, attention_mask=mask).logits
    except Exception as err:
        return _workbench_error(err, "routed forward")
    diff = float((routed[real] - stock[real]).abs().max())
    if not diff <= LOGITS_ATOL:
        return "wrong", f"routed logits differ from stock logits by {diff:.2g}"

    if len(own) != s.n_layers:
        return "wrong", (f"the model returns {len(own)} attention patterns; lens found {s.n_layers} "
                         "attention layers")
    ref = reference_stats(own, s.arch.sliding_window, ids, mask)
    for backend in ("eager", "chunked"):
        phase[0] = f"lens.capture ({backend})"
        try:
            cap = lens.capture(s, rows, backend=backend, resid_norm=False, massive=False, value_norm=False,
                               progress=False)
        except Exception as err:
            return _workbench_error(err, f"lens.capture {backend}")
        names = [n for n in ref if n in cap.stats]
        if len(names) < 14:
            return "wrong", f"{backend}: only {len(names)} statistics recorded ({names})"
        for name in names:
            got = cap.stats[name].detach().float().cpu()
            want = ref[name]
            if name == "visible" and got.ndim == want.ndim - 1:
                got = got[:, :, None].expand_as(want)
            if got.shape != want.shape:
                return "wrong", f"{backend} {name}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
            err_ = (got - want).abs()
            bad = err_ > ATOL + 1e-5 * want.abs()
            if not torch.isfinite(got).all() or bool(bad.any()):
                worst = float(torch.nan_to_num(err_, nan=math.inf).max())
                return "wrong", f"{backend} {name}: max abs diff {worst:.2g}"
    feats = s.arch.features()
    return "exact", f"{s.n_layers} layers; " + (", ".join(feats) if feats else "full attention, MHA")


# --- the run, its summary, the README ------------------------------------------------------------
def model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def run(types=None, *, time_limit_s: int = TIME_LIMIT, progress: bool = True) -> dict:
    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    types = list(types) if types else model_types()
    results = {}
    t0 = time.perf_counter()
    for i, t in enumerate(types):
        results[t] = check(t, time_limit_s=time_limit_s)
        if progress:
            r = results[t]
            print(f"[{i + 1:3d}/{len(types)}] {t:28s} {r['outcome']:9s} {r['seconds']:6.1f}s  {r['detail'][:110]}",
                  flush=True)
    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "seconds": round(time.perf_counter() - t0, 1),
            "results": results}


def counts(report: dict) -> dict[str, int]:
    c = {o: 0 for o in OUTCOMES}
    for r in report["results"].values():
        c[r["outcome"]] = c.get(r["outcome"], 0) + 1
    return c


def summary(report: dict) -> str:
    c = counts(report)
    lines = [f"transformers {report['transformers']}, {len(report['results'])} causal-LM model types, "
             f"{report['seconds']} s: " + ", ".join(f"{v} {k}" for k, v in c.items())]
    for kind in ("crash", "wrong"):
        bad = {t: r for t, r in report["results"].items() if r["outcome"] == kind}
        if bad:
            lines.append(f"{kind.upper()} ({len(bad)}):")
            lines += [f"  {t}: {r['detail']}" for t, r in sorted(bad.items())]
    return "\n".join(lines)


def readme_section(report: dict) -> str:
    c = counts(report)
    lines = [f"Generated by `python docs/census.py --write-readme` with transformers {report['transformers']} "
             f"(torch {report['torch']}) on {report['date']}: {len(report['results'])} causal-LM model types, "
             + ", ".join(f"**{v} {k}**" for k, v in c.items()) + ".", "",
             "| model type | outcome | detail |", "|---|---|---|"]
    for t, r in sorted(report["results"].items()):
        outcome = r["outcome"] if r["outcome"] not in ("wrong", "crash") else f"**{r['outcome'].upper()}**"
        detail = r["detail"].replace("|", "/").replace("\n", " ")
        lines.append(f"| `{t}` | {outcome} | {detail} |")
    return "\n".join(lines)


def write_readme(report: dict, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{readme_section(report)}\n{END}{tail}")
    print(f"wrote {len(report['results'])} model types into {readme}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="TYPE", help="these model types only")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the outcomes as JSON")
    parser.add_argument("--from", dest="source", type=Path, help="use a report written by --json instead of running")
    parser.add_argument("--write-readme", action="store_true", help="rewrite the README's census section")
    parser.add_argument("--time-limit", type=int, default=TIME_LIMIT, help="seconds per model type (0: none)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no line per model type")
    args = parser.parse_args(argv)
    if args.source:
        report = json.loads(args.source.read_text())
    else:
        known = set(model_types())
        unknown = [t for t in args.only or [] if t not in known]
        if unknown:
            parser.error(f"not causal-LM model types of this transformers: {unknown}")
        report = run(args.only, time_limit_s=args.time_limit, progress=not args.quiet)
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    if args.write_readme:
        if args.only:
            raise SystemExit("--write-readme needs the full census (no --only)")
        write_readme(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
