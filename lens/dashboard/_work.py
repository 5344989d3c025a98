"""The lens calls behind the pages: check input, capture and analyze, generate, edit, write a spec.

No analysis is defined here: these functions call ``lens`` and hand its Captures and
Findings to ``viz``. Everything the page sends is plain data (text, numbers, names from a
fixed list); nothing is read from a path or evaluated as code.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

import lens
from lens import circuits, probes
from lens import edits as E
from lens.analyzers import dormant_inputs
from lens.experiments import TASKS, make_task, parse_spec
from lens.kernels import StatOptions
from lens.model.organisms import induction_data, repeat_mask
from lens.record import CAPTURE_STATS

# Display pooling: inputs up to this many tokens get exact patterns for every head from
# the ``pooled`` statistic (pool factor 1); longer ones are block-averaged to this size.
POOL_MAX = 128


@dataclass
class Analysis:
    """One text's capture, its atlas and the per-input dormant table, as the pages read them."""

    text: str
    capture: lens.Capture
    atlas: lens.Atlas
    dormant: object  # Findings from dormant_inputs
    seconds: float
    source: str = "live text"  # or the directory of a saved capture


def token_limit(subject: lens.Subject, max_tokens: int | None = None) -> int:
    """The longest live text: the model's context, or a lower ``--max-tokens``.

    No backend sets a lower limit: on a CPU the ``auto`` backend streams keys in chunks
    (memory linear in length), on a GPU the Triton kernels do; and ``lens.capture``
    refuses, before the model runs, a capture whose results do not fit in memory.
    """
    return min(int(subject.n_ctx), int(max_tokens)) if max_tokens else int(subject.n_ctx)


def check_text(subject: lens.Subject, text: str | None, max_tokens: int | None = None) -> int:
    """Number of tokens of ``text``; ValueError with a message for the page when it is empty or too long."""
    if text is None or not str(text).strip():
        raise ValueError("The text is empty: type or paste some text to analyze.")
    check_unicode(str(text), "The text")
    n = len(subject.tokenizer(str(text), add_special_tokens=True)["input_ids"])
    limit = token_limit(subject, max_tokens)
    if n > limit:
        why = "the model's context" if limit == subject.n_ctx else "this dashboard's limit"
        raise ValueError(f"The text has {n} tokens; {subject.name} takes at most {limit} here ({why}). "
                         "Shorten it.")
    return n


def check_unicode(text: str, what: str) -> None:
    """ValueError for a lone UTF-16 surrogate (a broken paste): tokenizers raise TypeError on one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} holds a character that is not valid Unicode ({text[err.start]!r} at "
                         f"character {err.start}, half of a broken emoji or symbol); remove it.") from None


@contextlib.contextmanager
def layer_progress(subject: lens.Subject, progress, label: str, passes: int = 1) -> Iterator[None]:
    """Report "label: layer i/L" to ``progress`` as the blocks run (forward hooks, removed on exit)."""
    total = subject.n_layers * passes
    count = [0]

    def hook(x, call):
        count[0] += 1
        progress.update(f"{label}: layer {min(count[0], total)}/{total}", count[0] / total)

    # acts only for this thread's forwards: a notebook's call on the same model is not counted
    with subject.hooks({("resid_post", i): hook for i in range(subject.n_layers)}):
        yield


def stat_options():
    return StatOptions(pool_max=POOL_MAX)


def analyze_text(subject: lens.Subject, text: str, progress=None) -> Analysis:
    """``lens.capture`` (every default statistic, display pooling) then ``lens.analyze``."""
    t0 = time.perf_counter()
    ctx = layer_progress(subject, progress, "capturing") if progress is not None else contextlib.nullcontext()
    with ctx:
        cap = lens.capture(subject, text, options=stat_options())
    if progress is not None:
        progress.update("analyzing", 1.0)
    atlas = lens.analyze(cap)
    return Analysis(text, cap, atlas, dormant_inputs(cap), time.perf_counter() - t0)


def analyze_capture(cap: lens.Capture, source: str) -> Analysis:
    """``lens.analyze`` of a saved Capture (no model: every analyzer reads the stored statistics).

    Only the first input is shown; ``text`` is None (the tokens are in the capture).
    """
    t0 = time.perf_counter()
    if cap.n_inputs > 1:
        cap = select_input(cap, 0)
    atlas = lens.analyze(cap)
    return Analysis(None, cap, atlas, dormant_inputs(cap), time.perf_counter() - t0, source=source)


def select_input(cap: lens.Capture, i: int) -> lens.Capture:
    """Input ``i`` of a Capture as a one-input Capture, cut to its real length (every per-input tensor)."""
    n = int(cap.lengths[i])
    stats = {}
    for name, t in cap.stats.items():
        t = t[i:i + 1]
        stat = CAPTURE_STATS.get(name)  # the registry says which dimensions are positions
        if stat is not None and t.ndim == len(stat.axes.split()):
            t = t[tuple(slice(0, n) if d in stat.position_dims else slice(None) for d in range(t.ndim))]
        stats[name] = t
    return lens.Capture(tokens=cap.tokens[i:i + 1, :n], lengths=cap.lengths[i:i + 1], str_tokens=[cap.str_tokens[i]],
                        stats=stats, patterns={k: v[i:i + 1] for k, v in cap.patterns.items()},
                        resid={k: v[i:i + 1, :n] for k, v in cap.resid.items()},
                        logits=None if cap.logits is None else cap.logits[i:i + 1], meta=dict(cap.meta))



def generate(subject: lens.Subject, prompt: str, max_new_tokens: int, progress=None) -> str:
    """Greedy continuation of ``prompt`` (through the chat template when the tokenizer has one).

    Returns the text to analyze: the prompt followed by the generated tokens.
    """
    if not prompt or not prompt.strip():
        raise ValueError("The prompt is empty: type a question to generate a reasoning trace from.")
    check_unicode(prompt, "The prompt")
    max_new_tokens = int(max_new_tokens)
    if not 1 <= max_new_tokens <= 512:
        raise ValueError(f"new tokens must be between 1 and 512, got {max_new_tokens}")
    tok = subject.tokenizer
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = torch.tensor([tok(prompt, add_special_tokens=True)["input_ids"]])
    if ids.shape[1] + max_new_tokens > subject.n_ctx:
        raise ValueError(f"prompt ({ids.shape[1]} tokens) + {max_new_tokens} new tokens exceed "
                         f"{subject.name}'s context of {subject.n_ctx}")
    step = [0]

    def hook(x, call):  # the last block runs once per generated token
        step[0] += 1
        if progress is not None:
            done = min(step[0], max_new_tokens)
            progress.update(f"generating: token {done}/{max_new_tokens}", done / max_new_tokens)

    with subject.hooks({("resid_post", subject.n_layers - 1): hook}), torch.no_grad():
        out = subject.model.generate(ids.to(subject.device), attention_mask=torch.ones_like(ids).to(subject.device),
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=subject.pad_token_id)
    new = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return f"{prompt.strip()}\n{new.strip()}"


# --- edits from the page -------------------------------------------------------------------
# type -> (label, the value field's meaning or None). Only edits lens.capture applies directly.
EDIT_TYPES = {
    "scale_attention": ("scale attention to keys by a factor (ZeroTuning: keys 0)", "factor"),
    "key_bias": ("add a bias to the pre-softmax scores of keys", "bias"),
    "move_to_bos": ("move all attention to position 0", None),
    "ablate": ("zero-ablate the head's output", None),
    "gate": ("multiply the head's output by a factor", "factor"),
}


def _index(value, what: str):
    """"all"/empty -> None; "3" or "1,2" -> int or list of ints."""
    s = "" if value is None else str(value).strip()
    if s in ("", "all", "*"):
        return None
    try:
        items = [int(x) for x in s.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ValueError(f"{what} must be 'all', a number or numbers separated by commas, got {value!r}") from None
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def edit_fields(kind: str, layer, head, keys, value) -> dict:
    """Check the page's edit fields and return them as a spec-style dict (``type``, ``layer``, ...)."""
    if kind not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {kind!r}; choose one of {list(EDIT_TYPES)}")
    out: dict = {"type": kind, "layer": _index(layer, "layer"), "head": _index(head, "head")}
    if kind in ("scale_attention", "key_bias"):
        k = _index(keys if keys not in (None, "") else "0", "keys")
        out["keys"] = 0 if k is None else k
    field = EDIT_TYPES[kind][1]
    if field is not None:
        try:
            out[field] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{field} must be a number, got {value!r}") from None
        if not math.isfinite(out[field]) and not (field == "bias" and out[field] == -math.inf):
            # NaN or inf would turn the pattern into NaN; a bias of -inf removes the keys, as in lens.edits
            extra = " (or -inf: remove the keys)" if field == "bias" else ""
            raise ValueError(f"{field} must be a finite number{extra}, got {value!r}")
        if field == "factor" and out[field] < 0:  # as the spec checks it: a factor is >= 0
            raise ValueError(f"factor must be >= 0, got {out[field]}")
    return out


def build_edit(fields: dict) -> E.Edit:
    """A ``lens.edits`` object from checked fields (see ``edit_fields``)."""
    where = {"layer": fields.get("layer"), "head": fields.get("head")}
    kind = fields["type"]
    if kind == "scale_attention":
        return E.ScaleAttention(**where, keys=fields["keys"], factor=fields["factor"])
    if kind == "key_bias":
        return E.KeyBias(**where, keys=fields["keys"], bias=fields["bias"])
    if kind == "move_to_bos":
        return E.MoveToBOS(**where)
    if kind == "ablate":
        return E.AblateHead(**where)
    if kind == "gate":
        return E.GateHead(**where, factor=fields["factor"])
    raise ValueError(f"unknown edit type {kind!r}")


def describe(fields: dict) -> str:
    def sel(v):
        return "all" if v is None else ",".join(map(str, v)) if isinstance(v, list) else str(v)

    extra = "".join(f", {k}={v}" for k, v in fields.items() if k not in ("type", "layer", "head"))
    return f"{fields['type']}(layer={sel(fields.get('layer'))}, head={sel(fields.get('head'))}{extra})"


def run_edits(subject: lens.Subject, text: str, edit_list: list[dict], progress=None) -> lens.Capture:
    """The same capture as ``analyze_text`` but with the edits applied (their statistics describe the edited model)."""
    if not edit_list:
        raise ValueError("No edit to apply: add at least one edit.")
    edits = [build_edit(f) for f in edit_list]
    for e in edits:
        e.targets(subject.attn_layers, subject.n_heads)  # a head that does not exist fails here, clearly
    ctx = layer_progress(subject, progress, "edited pass") if progress is not None else contextlib.nullcontext()
    with ctx:
        return lens.capture(subject, text, edits=edits, options=stat_options())


def spec_toml(model: str, edit_list: list[dict], *, task: str, n_test: int, seed: int = 0,
              name: str = "dashboard-edit") -> str:
    """An experiment spec (``lens run``) with these edits on a built-in task.

    Checked by ``lens.experiments.parse_spec`` when that package is available.
    """
    lines = [f'name = "{name}"', f'model = "{model}"', f"seed = {int(seed)}", 'metrics = ["accuracy", "logit_diff"]',
             "", "[task]", f'name = "{task}"', "calibration = 0", f"test = {int(n_test)}"]
    for f in edit_list:
        lines += ["", "[[edits]]"]
        for k, v in f.items():
            if v is None:
                continue
            if k in ("factor", "bias"):
                v = float(v)  # the page's JSON round trip turns 0.0 into 0
            lines.append(f"{k} = {_toml(v)}")
    text = "\n".join(lines) + "\n"
    parse_spec(text, source="dashboard spec")
    return text


def _toml(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def task_names() -> list[str]:
    return list(TASKS)


# --- circuits and probes on built-in tasks ---------------------------------------------------------
def is_organism(subject: lens.Subject) -> bool:
    return subject.info.get("kind") in ("bigram_backcopy", "induction")


def circuit_tasks(subject: lens.Subject) -> list[str]:
    """Built-in pair tasks of ``circuits.make_pairs`` that fit this model's vocabulary."""
    return ["induction"] if is_organism(subject) else ["ioi", "colored_objects"]


def find_circuit(subject: lens.Subject, task: str, n_pairs: int, top_k: int, progress=None, ig_steps: int = 0):
    """``circuits.discover`` (EAP, top-k edges) on ``n_pairs`` built-in pairs, evaluated for faithfulness.

    ig_steps > 0 scores edges with EAP-IG (the built-in pairs have equal lengths)."""
    if task not in circuit_tasks(subject):
        raise ValueError(f"task {task!r} does not fit {subject.name}; choose one of {circuit_tasks(subject)}")
    if not 2 <= int(n_pairs) <= 64 or not 1 <= int(top_k) <= 500 or not 0 <= int(ig_steps) <= 16:
        raise ValueError("pairs must be 2-64, edges 1-500 and IG steps 0-16")
    if progress is not None:
        progress.update(f"making {n_pairs} {task} pairs")
    pairs = circuits.make_pairs(subject, task, int(n_pairs), seed=0)
    if progress is not None:
        how = "EAP" if not ig_steps else f"EAP-IG, {int(ig_steps)} steps"
        progress.update(f"attribution patching ({how}) over {len(pairs)} pairs, then evaluating the circuit")
    return circuits.discover(subject, pairs, method="eap", top_k=int(top_k), ig_steps=int(ig_steps))


def probe_tasks(subject: lens.Subject) -> list[str]:
    """Built-in probing tasks: repeated tokens (organisms) or the answer of an experiments task (at the last token)."""
    return ["repeats"] if is_organism(subject) else [t for t in task_names() if t not in ("induction", "needle")]


def probe_task(subject: lens.Subject, task: str, n: int, seed: int = 0):
    """(inputs, labels [batch, pos]) for a built-in probing task; labels < 0 are ignored.

    repeats: repeated random sequences (``lens.model.organisms`` data); label 1 where the token
    repeats the one a period earlier, 0 in the first period, -1 on BOS.
    an experiments task: its test prompts; label = the answer's index at each prompt's last
    token, -1 elsewhere (does the residual stream at the end already hold the answer?).
    """
    if task not in probe_tasks(subject):
        raise ValueError(f"task {task!r} does not fit {subject.name}; choose one of {probe_tasks(subject)}")
    if task == "repeats":
        tokens, periods = induction_data(int(n), 48, seed=seed)
        labels = repeat_mask(periods, 48).long()
        labels[:, 0] = -1
        return tokens, labels
    data = make_task(task, 0, int(n), seed)
    prompts = [e.prompt for e in data.test]
    lengths = [len(subject.tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    labels = torch.full((len(prompts), max(lengths)), -1, dtype=torch.long)
    for i, (e, n_tok) in enumerate(zip(data.test, lengths)):
        labels[i, n_tok - 1] = int(e.answer)
    return prompts, labels


def run_probes(subject: lens.Subject, task: str, n: int, progress=None):
    """``probes.probe_layers`` on a built-in task: one row per layer with accuracy, control accuracy, selectivity."""
    if not 8 <= int(n) <= 512:
        raise ValueError(f"examples must be 8-512, got {n}")
    inputs, labels = probe_task(subject, task, int(n))
    passes = -(-int(n) // 16)  # probe_layers captures in batches of 16
    ctx = layer_progress(subject, progress, "capturing residual streams", passes) if progress is not None \
        else contextlib.nullcontext()
    with ctx:
        return probes.probe_layers(subject, inputs, labels)
