"""A census of every causal LM in the installed transformers: does ``lens.capture`` reproduce it exactly?

    python docs/census.py                       # every model type, summary on stdout
    python docs/census.py --only llama mpt      # some model types
    python docs/census.py --json census.json    # also write the outcomes as JSON
    python docs/census.py --write-readme        # also rewrite the README's census section
    python docs/census.py --from census.json --write-readme   # the README from a saved run

Every ``model_type`` in transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` is built as a tiny
random model from its config class's *defaults*, shrunk generically by attribute name (no table
per architecture; see ``overrides``): 3 to 8 layers, chosen so that every kind of layer the
default has is kept, with every per-layer attribute rewritten to match (``layer_types`` and
other per-layer lists, lists of layer indices, layers reading another layer's K/V, leading
dense and trailing shared-KV layer counts, hybrid periods, per-layer config overrides); hidden
size 64; 4 query heads over 2 key/value heads (1 for MQA, 4 where the default has no
grouping); other head, latent and state sizes divided by 8; SSM head counts kept consistent
with their inner width; 4 experts, 2 per token; 80 token ids with the special ids moved into
them; windows and attention chunks of 5 (shorter than the inputs); ``is_decoder=True``. The
config is constructed again with these values, or, when that fails, the default is changed in
place. Weights get a fixed seed and are scaled up as in ``tests/_tiny_archs.py`` (peaked
attention); float32, eval mode, one CPU thread.

Each model type gets exactly one outcome:

* ``exact``: ``lens.Subject`` accepts the model, routed logits equal its stock logits (atol
  1e-4), and every statistic of ``lens.capture`` (eager and chunked backends) equals the one
  computed from the model's *own* eager ``output_attentions`` pattern (atol 1e-5 and rtol 1e-5,
  as in ``tests/model/test_architectures.py``) on a padded batch (rows of 13 and 9 tokens) longer
  than any window. Which keys a query sees is read off that pattern too (windows, chunks and
  other masks as the model applies them). Where a statistic misses 1e-5 only within 4x the
  model's *own* float32 error (its float32 pattern against its float64 one: large logits), the
  detail says so. Where the model's weights leave a learned sink's share out (rows summing to
  1), the reference pattern is scaled by lens' share, which the logits check covers;
* ``refused``: the workbench refused it by name (``StructureError``, ``UnsupportedAttention`` or
  another ``ValueError`` raised inside ``lens``); the detail is the message's first sentence;
* ``wrong``: accepted, but a statistic (or the routed logits) differs: which, and by how much;
* ``not built``: the tiny model could not be built or run here (its default config or model
  fails, also at full size on the meta device when said so; its own eager forward fails; it
  returns no attention weights; over the time limit);
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
MIN_LAYERS, MAX_LAYERS = 3, 8
WINDOW = 5  # windows and attention chunks: shorter than both input rows
MAX_POSITIONS = 128
LENGTHS = (13, 9)  # a padded batch
ATOL = 1e-5
FLOAT32_ERROR_FACTOR = 4  # rounding: a statistic may differ by 4x the model's own float32 error
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
                           r"num_leading_dense_layers|dense_layers)$")
TRAILING_COUNT = re.compile(r"^(num_kv_shared_layers)$")
LAYER_PART = re.compile(r"^(n|num)_\w+_layers$")  # counts of consecutive layer groups that add up to all layers
PERIOD = re.compile(r"(_period|_interval|every_n_layers|sliding_window_pattern)$")
OFFSET = re.compile(r"layer\w*_offset$")
WINDOW_NAME = re.compile(r"(window|attention_chunk_size|^local_attention$)")
TOKEN_ID = re.compile(r"(token_id|token_index|_token_ids|^eod_id)")
HEAD_DIM_NAME = re.compile(r"(head_dim|d_head|headdim|head_size|dim_head)$")
WIDTH_NAME = re.compile(r"(d_ssm|d_inner|ssm_size|inner_size)$")  # SSM inner widths: scaled with the hidden size
INTER_NAME = re.compile(r"(intermediate|ffn|ff_dim|dim_ff|d_ff|inner|feed_forward|dff)")


def _even(x: float, lo: int = 4, hi: int = 64) -> int:
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
    out = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    for k in _fields(type(cfg)):
        if k not in out and not k.startswith("_"):
            with contextlib.suppress(Exception):  # AttributeError, or a per-layer attribute read globally
                out[k] = getattr(cfg, k)
    return out


def _is_config(v) -> bool:
    from transformers import PretrainedConfig

    return isinstance(v, PretrainedConfig)


# --- layers -----------------------------------------------------------------------------------
def _layer_plan(attrs: dict, n: int) -> tuple[list[int], dict]:
    """Which of the default's ``n`` layers to keep, and the per-layer attributes rewritten for them.

    Read per layer: lists of length ``n`` (layer types, block types, MLP types, flags), lists
    of layer indices (``attn_layer_indices``, ``moe_layers``, ...), per-layer references to
    other layers (a layer reading another's K/V), leading/trailing layer counts (dense layers
    first, shared-KV layers last) and consecutive layer groups that add up to ``n``. The kept
    layers are the first of each kind (every kind the default has), then the second of each kind
    while there is room (a layer of a kind can then share with another), the layers they refer
    to, and the first layers up to ``MIN_LAYERS``; every attribute is rewritten for them.
    """
    per_layer, refs, index_lists, leading, trailing = {}, {}, {}, {}, {}
    for k, v in attrs.items():
        if isinstance(v, (list, tuple)) and len(v) == n and n > 1 and all(not isinstance(x, (list, dict)) for x in v):
            if (all(_is_int(x) and 0 <= x < n for x in v) and all(x <= i for i, x in enumerate(v))
                    and any(x == i for i, x in enumerate(v)) and len(set(v)) > 2):
                refs[k] = list(v)  # layer i reads layer v[i]
            else:
                per_layer[k] = list(v)
        elif (isinstance(v, (list, tuple)) and v and all(_is_int(x) and 0 <= x < n for x in v)
              and list(v) == sorted(set(v)) and len(v) < n and re.search(r"layer|idx|ids", k)
              and not TOKEN_ID.search(k)):
            index_lists[k] = set(v)
        elif _is_int(v) and LEADING_COUNT.match(k) and 0 < v <= n:
            leading[k] = v
        elif _is_int(v) and TRAILING_COUNT.match(k) and 0 < v < n:
            trailing[k] = v
    parts = {k: v for k, v in attrs.items() if _is_int(v) and v > 0 and LAYER_PART.match(k)
             and k not in LAYER_KEYS and k not in leading and k not in trailing}
    if sum(parts.values()) != n:
        parts = {}
    starts, at = {}, 0
    for k, v in parts.items():
        starts[k], at = (at, at + v), at + v

    def categorical(values) -> bool:  # a kind of layer, not a per-layer number like a rope theta
        return len(set(map(repr, values))) <= 8

    keys = [k for k, v in per_layer.items() if categorical(v)]
    sig = [tuple(repr(per_layer[k][i]) for k in keys)
           + tuple(v[i] == i for v in refs.values())
           + tuple(i in s for s in index_lists.values())
           + tuple(i < c for c in leading.values())
           + tuple(i >= n - c for c in trailing.values())
           + tuple(lo <= i < hi for lo, hi in starts.values()) for i in range(n)]
    first = [i for i in range(n) if sig[i] not in sig[:i]]  # the first layer of each kind
    second = [i for i in range(n) if sig[:i].count(sig[i]) == 1]  # and the second, while there is room
    keep = first[:MAX_LAYERS]
    keep += second[:max(0, MAX_LAYERS - len(keep))]
    keep += [i for i in range(n) if i not in keep][:max(0, MIN_LAYERS - len(keep))]
    keep = sorted(keep)
    while True:  # and the layers the kept ones read from
        more = {v[i] for v in refs.values() for i in keep} - set(keep)
        if not more:
            break
        keep = sorted(set(keep) | more)
    new = {k: [v[i] for i in keep] for k, v in per_layer.items()}
    new.update({k: [keep.index(v[i]) for i in keep] for k, v in refs.items()})
    new.update({k: [j for j, i in enumerate(keep) if i in s] for k, s in index_lists.items()})
    new.update({k: sum(i < c for i in keep) for k, c in leading.items()})
    new.update({k: sum(i >= n - c for i in keep) for k, c in trailing.items()})
    new.update({k: sum(lo <= i < hi for i in keep) for k, (lo, hi) in starts.items()})
    return keep, new


# --- the shrink -----------------------------------------------------------------------------------
def overrides(cfg, hiddens: frozenset | None = None) -> dict:
    """The attributes of ``cfg`` to change, by attribute name; a sub-config maps to its own overrides.

    ``hiddens``: the hidden sizes of every config in the tree (a width named like a hidden size
    that equals one of them is that stack's width, and follows it to ``HIDDEN``).
    """
    top = hiddens is None
    if top:
        hiddens = frozenset(_hidden_sizes(cfg))
    attrs = _attrs(cfg)
    over: dict = {}
    old_hidden = next((attrs[k] for k in HIDDEN_KEYS if _is_int(attrs.get(k))), None)
    old_heads = next((attrs[k] for k in HEAD_KEYS if _is_int(attrs.get(k))), None)
    old_kv = next((attrs[k] for k in KV_KEYS if _is_int(attrs.get(k))), None)
    heads = HEADS if old_heads is None or old_heads >= HEADS else old_heads
    kv = heads if old_kv is None or old_kv == old_heads else 1 if old_kv == 1 else 2
    default_hd = old_hidden // old_heads if old_hidden and old_heads else None
    ctx = dict(heads=heads, kv=kv, old_hidden=old_hidden, default_hd=default_hd, hiddens=hiddens)

    n_layers = next((attrs[k] for k in LAYER_KEYS if _is_int(attrs.get(k))), None)
    # heterogeneous configs: per-layer overrides of global attributes (``config.per_layer_config``)
    spec = getattr(cfg.__dict__.get("_heterogeneity_spec"), "per_layer_overrides", None) or {}
    if n_layers:
        plan_attrs = dict(attrs)
        if spec:
            plan_attrs["<per_layer_config>"] = [repr(sorted(spec.get(i, {}).items())) for i in range(n_layers)]
        keep, layered = _layer_plan(plan_attrs, n_layers)
        layered.pop("<per_layer_config>", None)
        for k, v in layered.items():  # per-layer sizes (e.g. an intermediate size per layer) shrink too
            if isinstance(v, list) and isinstance(attrs.get(k), (list, tuple)) and len(attrs[k]) == n_layers:
                layered[k] = [_or(_shrink_int(k, x, **ctx), x) if _is_int(x) else x for x in v]
        over.update(layered)
        for k in LAYER_KEYS:
            if _is_int(attrs.get(k)):
                over[k] = len(keep)
        if spec:
            over["per_layer_config"] = {
                j: {a: _or(_shrink_int(a, v, **ctx), v) if _is_int(v) else v for a, v in spec[i].items()}
                for j, i in enumerate(keep) if spec.get(i)}
    for k, v in attrs.items():
        if k in over:
            continue
        if _is_int(v):
            new = _shrink_int(k, v, **ctx)
            if new is not None and new != v:
                over[k] = new
        elif isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v) and TOKEN_ID.search(k):
            over[k] = [_token(k, x) for x in v]
        elif (isinstance(v, (list, tuple)) and len(v) > 1 and all(_is_int(x) and x > 0 for x in v)
              and sum(v) == old_hidden):  # parts of the hidden size (e.g. axial position embeddings)
            over[k] = type(v)(HIDDEN * x // old_hidden for x in v[:-1]) + type(v)([HIDDEN - sum(
                HIDDEN * x // old_hidden for x in v[:-1])])
        elif v is None and k in TOPK_KEYS and any(_is_int(x) and x > 1 for a, x in attrs.items() if "expert" in a):
            over[k] = 2  # experts without a default top-k: route to two
        elif _is_config(v):
            over[k] = overrides(v, hiddens)
    for k, v in attrs.items():  # hybrid patterns repeat every other layer
        if _is_int(v) and PERIOD.search(k) and v > 2:
            over[k] = 2
        if _is_int(v) and OFFSET.search(k) and v >= 2:
            over[k] = v % 2
    _keep_products(attrs, over)
    if top and attrs.get("is_decoder") is False:
        over["is_decoder"] = True  # a causal LM: encoder architectures' LM heads attend causally only as decoders
    return over


def _keep_products(attrs: dict, over: dict) -> None:
    """A head count times a head size that equals an SSM block's inner width in the default
    (``n_heads * d_head == expand * hidden_size`` or ``== d_ssm``) still does after the shrink."""
    ints = {k: v for k, v in attrs.items() if _is_int(v) and v > 1}

    def new(k):
        return over.get(k, attrs[k])

    heads = [k for k in ints if "heads" in k.lower()]
    dims = [k for k in ints if HEAD_DIM_NAME.search(k)]
    widths = [k for k in ints if k not in heads and k not in dims and WIDTH_NAME.search(k)]
    expands = [k for k in ints if "expand" in k]
    hidden = [k for k in HIDDEN_KEYS if k in ints]
    for h in heads:
        for d in dims:
            product = ints[h] * ints[d]
            targets = [new(w) for w in widths if ints[w] == product and w in over]
            targets += [new(e) * new(x) for e in expands for x in hidden if ints[e] * ints[x] == product]
            if not targets or not all(_is_int(t) for t in targets):
                continue
            t = targets[0]
            if t % new(d) == 0 and t // new(d) >= 1:
                over[h] = t // new(d)
            elif t % new(h) == 0:
                over[d] = t // new(h)


def _or(value, default):
    return default if value is None else value


def _inter(v: int, old_hidden) -> int:
    ratio = v / old_hidden if old_hidden else 2.0
    return int(max(16, min(192, 8 * round(ratio * HIDDEN / 8))))


def _token(k: str, v: int) -> int:
    if 0 <= v < VOCAB:
        return v
    fixed = {"bos_token_id": BOS, "pad_token_id": PAD, "eos_token_id": EOS}
    if k in fixed:
        return fixed[k]
    return 67 + sum(map(ord, k)) % (VOCAB - 67)  # another special id, inside the vocabulary (deterministic)


def _hidden_sizes(cfg, seen=None) -> list[int]:
    seen = seen if seen is not None else set()
    if id(cfg) in seen:
        return []
    seen.add(id(cfg))
    attrs = _attrs(cfg)
    out = [attrs[k] for k in HIDDEN_KEYS if _is_int(attrs.get(k))]
    for v in attrs.values():
        if _is_config(v):
            out += _hidden_sizes(v, seen)
    return out


def _shrink_int(k, v, *, heads, kv, old_hidden, default_hd, hiddens=frozenset()):
    kl = k.lower()
    if k in HIDDEN_KEYS:
        return HIDDEN
    if k in HEAD_KEYS:
        return heads
    if k in KV_KEYS:
        return kv
    if k in HEAD_DIM_KEYS:
        return HIDDEN // heads if v == default_hd else _even(v / 8)
    if k == "vocab_size" or ("vocab" in kl and "type" not in kl and v > VOCAB):
        return VOCAB
    if TOKEN_ID.search(k):
        return _token(k, v)
    if k in POSITION_KEYS:
        return min(v, MAX_POSITIONS) if v > 16 else v
    if k in TOPK_KEYS:
        return min(v, 2)
    if k in GROUP_KEYS:
        return 1
    if WINDOW_NAME.search(kl):
        return WINDOW if v > WINDOW else v
    if "chunk" in kl:  # feed-forward / SSM / inference chunking: not a size of the model
        return None
    if WIDTH_NAME.search(kl):
        return max(8, 8 * round(v * HIDDEN / old_hidden / 8)) if old_hidden else None
    if "expert" in kl and ("inter" in kl or "ffn" in kl or "hidden" in kl):
        return _inter(v, old_hidden)
    if "expert" in kl and "shared" in kl:
        return min(v, 1)
    if "expert" in kl and v > 4 and not re.search(r"period|offset|layer", kl):
        return 4
    if INTER_NAME.search(kl):
        return _inter(v, old_hidden)
    if "heads" in kl:
        return (1 if v == 1 else 2) if ("kv" in kl or "key" in kl) else min(v, heads)
    if kl.endswith(("head_dim", "head_size", "_rank", "_dim", "headdim", "d_head", "_d_state", "state_size")):
        if old_hidden and v == old_hidden:
            return HIDDEN
        return _even(v / 8)
    if old_hidden and v == old_hidden and re.search(r"size|dim|width", kl):
        return HIDDEN
    if re.match(r"^hidden_size_|.*_hidden_size$", kl) and v > HIDDEN:
        if v in hiddens:  # another stack's width (a global transformer's, a sub-config's)
            return HIDDEN
        if old_hidden and v % old_hidden == 0:  # a multiple of this one's (e.g. concatenated embeddings)
            return HIDDEN * (v // old_hidden)
    return None


def _as_dict(cfg, over: dict) -> dict:
    d = cfg.to_dict()
    for k, v in over.items():
        sub = cfg.__dict__.get(k)
        d[k] = _as_dict(sub, v) if _is_config(sub) and isinstance(v, dict) else v
    return d


def rebuilt(cfg, over: dict):
    """``cfg``'s class constructed again with the overrides (derived attributes recomputed)."""
    cls = type(cfg)
    fields = _fields(cls)
    kwargs = {}
    for k, v in over.items():
        sub = cfg.__dict__.get(k)
        kwargs[k] = _as_dict(sub, v) if _is_config(sub) and isinstance(v, dict) else v
    new = cls(**{k: v for k, v in kwargs.items() if k in fields or k == "per_layer_config"})
    for k, v in kwargs.items():  # derived attributes the constructor did not recompute
        if k not in fields and k != "per_layer_config" and not _is_config(new.__dict__.get(k)):
            with contextlib.suppress(Exception):
                if new.__dict__.get(k) == cfg.__dict__.get(k):
                    setattr(new, k, v)
    return new


def mutated(cfg, over: dict):
    """A copy of ``cfg`` with the overrides set in place (nothing recomputed, nothing validated)."""
    import copy

    new = copy.deepcopy(cfg)
    _set(new, over)
    return new


def _set(cfg, over: dict) -> None:
    for k, v in over.items():
        sub = cfg.__dict__.get(k)
        if _is_config(sub) and isinstance(v, dict):
            _set(sub, v)
        else:
            try:
                setattr(cfg, k, v)
            except Exception:  # a validating __setattr__: set it anyway, the model build will tell
                with contextlib.suppress(Exception):
                    object.__setattr__(cfg, k, v)


def default_config(model_type: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]()


def tiny_configs(model_type: str):
    """The shrunk config, built two ways: constructed again with the overrides (derived attributes
    follow), and the default with the overrides set in place (for configs whose constructor
    derives per-layer lists from a pattern the overrides cannot express)."""
    cfg = default_config(model_type)
    over = overrides(cfg)
    yield "rebuilt", lambda: rebuilt(cfg, over)
    yield "set in place", lambda: mutated(cfg, over)


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


def reference_stats(patterns, ids, mask, seen=None) -> dict:
    """Every statistic ``[b, layer, head, ...]`` from the model's own attention patterns, one
    ``[b, h, q, k]`` per layer, by its definition (as in ``tests/model/test_architectures.py``).

    Which keys a query sees is read off the model's own pattern too (``p > 0``: a masked key
    gets exactly 0), so windows, chunks and any other mask the model builds count as it applies them;
    ``seen``: the patterns to read it from, when ``patterns`` were rescaled.
    """
    import torch

    b, n = ids.shape
    qpos = torch.arange(n)[:, None]
    kpos = torch.arange(n)[None, :]
    valid = mask.bool()
    per_layer = []
    for p, p_seen in zip(patterns, seen or patterns):
        sees = p_seen > 0
        p = p.float() * valid[:, None, :, None]
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
            "visible": (sees & valid[:, None, :, None]).sum(-2).float(),
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


def first_sentence(message: str, limit: int = 220) -> str:
    text = " ".join(str(message).split())
    m = re.search(r"(?<=[a-z0-9\)\]'\"`])[.;](\s|$)", text)
    if m:
        text = text[:m.start()]
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _raised_in_lens(err: BaseException) -> bool:
    import lens

    tb = traceback.extract_tb(err.__traceback__)
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
    """Raise ``_Timeout`` in the block after ``seconds`` (SIGALRM; main thread only). An alarm already
    set (e.g. pytest-timeout's) is put back afterwards, less the time spent here."""
    import threading

    if seconds <= 0 or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, handler)
    pending = signal.alarm(seconds)
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if pending:
            signal.alarm(max(1, int(pending - (time.monotonic() - t0))))


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
        in_lens = phase[0].startswith(("lens", "routed"))  # the workbench hanging on a tiny model is a bug
        outcome, detail = ("crash" if in_lens else "not built"), f"over the {time_limit_s} s limit (in {phase[0]})"
    except Exception as err:  # isolate every failure: it is this model's outcome (here: a bug of the census)
        outcome, detail = "crash", f"census ({phase[0]}): {type(err).__name__}: {first_sentence(str(err))}"
    finally:
        torch.set_default_dtype(dtype)
    return {"outcome": outcome, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)}


def _built(model_type: str, ids, mask, phase: list[str]):
    """The tiny model and its own eager forward (``output_attentions=True``) on the padded batch, or why not.

    Tries the shrunk config constructed again, then set in place; of two failures, reports the
    one that got further (config < model < forward).
    """
    import torch

    def short(err):
        return f"{type(err).__name__}: {first_sentence(str(err))}"

    try:
        candidates = list(tiny_configs(model_type))
    except Exception as err:
        return None, None, f"config: the default config fails: {short(err)}"
    failures = []
    for how, make in candidates:
        phase[0] = f"config ({how})"
        try:
            cfg = make()
        except Exception as err:
            failures.append((0, f"config: {short(err)}"))
            continue
        phase[0] = f"model ({how})"
        try:
            model = build(cfg)
        except Exception as err:
            failures.append((1, f"model: {short(err)}{_default_fails_too(model_type, err)}"))
            continue
        phase[0] = f"own eager forward ({how})"
        try:
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
        except Exception as err:
            failures.append((2, f"its own eager forward fails here: {short(err)}"))
            continue
        logits = getattr(out, "logits", None)
        if not isinstance(logits, torch.Tensor):
            failures.append((3, "its forward returns no logits"))
            continue
        if not torch.isfinite(logits[mask.bool()]).all():
            failures.append((3, "its own logits are not finite at these sizes"))
            continue
        return model, out, None
    best = max(f[0] for f in failures)
    return None, None, next(d for s, d in failures if s == best)


def _default_fails_too(model_type: str, err: BaseException) -> str:
    """" (as does its default config)" when the full-size default fails the same way (built on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(default_config(model_type), attn_implementation="eager")
    except Exception as e:
        if type(e) is type(err):
            return " (as does its default config: a transformers issue)"
    return ""


def _check(model_type: str, phase: list[str]) -> tuple[str, str]:
    import torch

    import lens
    from lens.model import _routing

    tok = tokenizer()
    rows, ids, mask = inputs(PAD)
    model, out, failure = _built(model_type, ids, mask, phase)
    if model is None:
        return "not built", failure
    stock = out.logits
    real = mask.bool()
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
            routed = s.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    except Exception as err:
        return _workbench_error(err, "routed forward")
    diff = float((routed[real] - stock[real]).abs().max())
    if not diff <= LOGITS_ATOL:
        return "wrong", f"routed logits differ from stock logits by {diff:.2g}"

    attn_layers = tuple(getattr(s, "attn_layers", None) or range(s.n_layers))  # hybrids: some blocks only
    if len(own) == s.n_layers != len(attn_layers):  # a pattern from every block, linear attention's too
        own = [own[i] for i in attn_layers]
    if len(own) != len(attn_layers):
        return "wrong", (f"the model returns {len(own)} attention patterns; lens found {len(attn_layers)} "
                         "attention layers")
    valid = real[:, None, :]
    # The weights some models return leave a learned sink's share out (rows sum to 1; the sink scales
    # the output instead): the probabilities they multiply the values by are then p * (1 - sink share).
    # The share is lens' own, checked through the logits above (a wrong share changes the output).
    sink_left_out = s.arch.has_learned_sinks and all(
        float(((p.float().sum(-1) - 1).abs() * valid).max()) < 1e-4 for p in own)

    def reference(cap, patterns):
        if not sink_left_out:
            return reference_stats(patterns, ids, mask)
        share = cap.stats["learned_sink_mass"].detach().float().cpu()
        scaled = [p.float() * (1 - share[:, i, :, :, None]) for i, p in enumerate(patterns)]
        return reference_stats(scaled, ids, mask, seen=patterns)

    noise: dict | None = None  # the model's own float32 error per statistic, measured when needed
    notes = []
    for backend in ("eager", "chunked"):
        phase[0] = f"lens.capture ({backend})"
        try:
            cap = lens.capture(s, rows, backend=backend, resid_norm=False, massive=False, value_norm=False,
                               progress=False)
        except Exception as err:
            return _workbench_error(err, f"lens.capture {backend}")
        try:
            ref = reference(cap, own)
        except _Wrong as err:
            return "wrong", str(err)
        names = [n for n in ref if n in cap.stats]
        if len(names) < 14:
            return "wrong", f"{backend}: only {len(names)} statistics recorded ({names})"
        for name in names:
            got = cap.stats[name].detach().float().cpu()
            want = ref[name]
            if name == "visible" and got.ndim == want.ndim - 1:  # [b, layer, k]: the same for every head
                got = got[:, :, None].expand_as(want)
            if got.shape != want.shape:
                return "wrong", f"{backend} {name}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
            diff = torch.nan_to_num((got - want).abs(), nan=math.inf)
            worst = float(diff.max())
            if not bool((diff > ATOL + 1e-5 * want.abs()).any()):
                continue
            if noise is None:
                phase[0] = "own float64 forward"
                noise = _float32_error(model, ids, mask, attn_layers, own, lambda ps: reference(cap, ps))
            floor = FLOAT32_ERROR_FACTOR * noise.get(name, 0.0)
            if worst <= floor:
                notes.append((worst, f"{backend} {name} {worst:.1e}, the model's own float32 error "
                                     f"{noise[name]:.1e}"))
                continue
            return "wrong", f"{backend} {name}: max abs diff {worst:.2g}" + (
                f" (the model's own float32 error: {noise[name]:.1e})" if noise.get(name) else "")
    feats = s.arch.features()
    detail = f"{s.n_layers} layers; " + (", ".join(feats) if feats else "MHA")
    if sink_left_out:
        detail += "; sink share not in the model's attention weights (checked via the logits)"
    if notes:
        detail += f"; within float32 rounding: {max(notes)[1]}"
    return "exact", detail


def _float32_error(model, ids, mask, attn_layers, own, reference) -> dict:
    """Per statistic, how far the model's own float32 pattern is from its float64 one (max abs).

    The model is run once in float64 and put back (float32 values round-trip exactly). A
    difference within a small multiple of this is rounding, not a wrong attention.
    """
    import torch

    try:
        with torch.no_grad():
            model.double()
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
    except Exception:
        return {}
    finally:
        model.float()
    fine = [a for a in (getattr(out, "attentions", None) or ()) if a is not None]
    if len(fine) != len(own):
        fine = [fine[i] for i in attn_layers] if len(fine) > max(attn_layers) else []
    if len(fine) != len(own):
        return {}
    r32 = reference([p.double() for p in own])
    r64 = reference([p.double() for p in fine])
    return {k: float((r32[k].double() - r64[k].double()).abs().max()) for k in r32}


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other (10-50x slower on a busy CPU)
    try:
        for i, t in enumerate(types):
            results[t] = check(t, time_limit_s=time_limit_s)
            if progress:
                r = results[t]
                print(f"[{i + 1:3d}/{len(types)}] {t:28s} {r['outcome']:9s} {r['seconds']:6.1f}s  "
                      f"{r['detail'][:110]}", flush=True)
    finally:
        torch.set_num_threads(threads)
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


def replace_section(readme: Path, start: str, end: str, body: str) -> None:
    """Put ``body`` between the ``start`` and ``end`` markers of ``readme`` (generated tables, never hand-edited)."""
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body}\n{end}{tail}")


def write_readme(report: dict, readme: Path = ROOT / "README.md") -> None:
    replace_section(readme, START, END, readme_section(report))
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
        if args.only and not args.source:
            raise SystemExit("--write-readme needs the full census (no --only)")
        write_readme(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
