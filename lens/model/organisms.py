"""Model organisms: tiny GPT-2s trained on the spot on a CPU, with known ground truth.

``train("bigram_backcopy")`` learns the Bigram-Backcopy task (METHODS sec 2): its single
head is *active* on trigger tokens (it attends the previous token to back-copy) and
*dormant* elsewhere (it parks its attention on BOS, whose value is drained).
``train("induction")`` learns repeated random sequences (METHODS sec 11): a layer-0
previous-token head and a layer-1 induction head form. Analyzer, circuit and probe tests
use them as oracles: the heads and triggers to find are written in ``subject.info``.

What the stock architecture changes: GPT-2's own initialisation (normal, std 0.02) keeps the
Bigram-Backcopy head from forming its sink: trained so, it learns the task but spreads its idle
attention (held-out BOS attention from non-trigger queries 0.20, value-drain ratio 0.36). With
PyTorch's layer defaults instead (``Recipe.init = "torch"``: embeddings N(0, 1), the papers'
hand-written models) the same stock GPT-2 parks on BOS as METHODS sec 2 reports: BOS attention
0.995 from non-trigger queries, 0.97 to the previous token at triggers, value-drain ratio 0.20.
A plain-torch copy of the paper's model (no biases, ReLU) gave 0.99 / 0.19 with torch init and
0.15 / 0.50 with GPT-2's, so under torch init GPT-2's biases and GELU do not stop the sink.
The induction GPT-2 keeps its LayerNorms, and its MLPs are zeroed and frozen
(``Recipe.attention_only``): with a trainable MLP the stock model found no induction circuit
in 2000 steps (every head's induction score <= 0.01), attention-only it forms by step 250.

Both are stock ``GPT2LMHeadModel``s, so every path of the workbench (capture through the
transformers attention interface, the TransformerLens bridge, nnsight, patching) runs on
them unchanged. Training is seeded and deterministic; the result is cached (see
``lens.model._cache``) so later calls, also in new processes, load in about a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tqdm.auto import tqdm

from lens.model import _cache, _lazy
from lens.model._organisms_data import (
    BOS_ID,
    HELD_OUT_SEED,
    N_TOKENS,
    PAD_ID,
    SPECIAL_TOKENS,
    TOKEN_NAMES,
    TRAIN_SEED,
    UNK_ID,
    VOCAB_SIZE,
    BigramChain,
    bigram_backcopy_data,
    bigram_chain,
    follows_trigger,
    induction_data,
    induction_test_data,
    repeat_mask,
    trigger_mask,
)
from lens.model._organisms_eval import (
    attention_patterns,
    copy_accuracy,
    induction_scores,
    masked_accuracy,
    masked_loss,
    previous_token_scores,
    sink_attention,
    value_drain_ratio,
)
from lens.model._subject import Subject

log = logging.getLogger("lens")

KINDS = ("bigram_backcopy", "induction")
CACHE_KIND = "organisms"
# Bump when a recipe, the data or the layout of an entry changes, so old entries are not reused.
VERSION = "v1"
CHAIN_FILE = "chain.safetensors"

# How the last ``train`` call got its model ("cache" or "trained"); tests read it.
last_train: dict = {}


@dataclass(frozen=True)
class Recipe:
    """Everything that fixes an organism besides its seed (METHODS sec 2 and 11 CPU recipes)."""

    n_layer: int
    n_head: int
    n_embd: int
    n_inner: int | None  # MLP width; None = GPT-2's 4 * n_embd
    seq_len: int
    steps: int
    batch: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    log_every: int = 50
    # Zero and freeze every MLP weight, so each block adds only its attention output
    # (METHODS sec 11's attention-only model, inside the stock GPT-2 module tree).
    attention_only: bool = False
    # "gpt2": transformers' GPT-2 init (normal, std 0.02); "torch": PyTorch's layer defaults
    # (embeddings N(0, 1), linear weights and biases U(+-1/sqrt(fan_in))), as in the papers'
    # hand-written models. The BOS sink of Bigram-Backcopy needs the latter (see the module doc).
    init: str = "gpt2"


RECIPES: dict[str, Recipe] = {
    "bigram_backcopy": Recipe(
        n_layer=1, n_head=1, n_embd=128, n_inner=None, seq_len=64,
        steps=1000, batch=64, lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.99), init="torch",
    ),
    "induction": Recipe(
        n_layer=2, n_head=4, n_embd=64, n_inner=None, seq_len=48,
        steps=2000, batch=64, lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.999), attention_only=True,
    ),
}


def train(kind: str, seed: int = 0, *, steps: int | None = None, force: bool = False, progress: bool = True) -> Subject:
    """The organism ``kind`` for ``seed``: from the cache, or trained on the CPU and cached.

    kind: ``"bigram_backcopy"`` or ``"induction"``. steps: training steps (default: the
    recipe's); a non-default count is cached under its own key. force: retrain and replace
    the cached entry. progress: show a tqdm bar with the loss while training.
    Same seed and steps -> bitwise the same weights, in any process.
    """
    if kind not in RECIPES:
        raise ValueError(f"unknown organism {kind!r}; known: {', '.join(KINDS)}")
    recipe = RECIPES[kind]
    steps = recipe.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    key = f"{kind}-seed{seed}-{VERSION}" + ("" if steps == recipe.steps else f"-steps{steps}")
    entry = _cache.entry_path(CACHE_KIND, key)
    with _cache.building(CACHE_KIND, key):  # another process training the same one: wait for its entry
        if not force and _cache.is_valid(entry) and _same_recipe(entry, recipe):
            t0 = time.perf_counter()
            subject = _load(entry)
            last_train.update(kind=kind, seed=seed, how="cache", seconds=time.perf_counter() - t0, path=str(entry))
            return subject
        if not force and entry.exists():
            log.warning("organism cache entry %s is incomplete or corrupt: retraining", entry)
        seconds = _train_into(entry, key, kind, recipe, seed=seed, steps=steps, progress=progress)
    last_train.update(kind=kind, seed=seed, how="trained", seconds=seconds, path=str(entry))
    # Hand back what the cache holds, so a fresh and a cached organism are the same object
    # kind (an in-memory tokenizer lacks the init kwargs TransformerLens' bridge reads).
    return _load(entry)


def _train_into(entry: Path, key: str, kind: str, recipe, *, seed: int, steps: int, progress) -> float:
    """Train the organism, evaluate it and write it to the cache entry ``key``; the training seconds."""
    t0 = time.perf_counter()
    chain = bigram_chain(seed) if kind == "bigram_backcopy" else None
    model, loss_log = _fit(kind, recipe, seed, steps, chain=chain, progress=progress)
    train_seconds = time.perf_counter() - t0
    tokenizer = make_tokenizer()
    info = {"kind": kind, "seed": seed, "steps": steps, "recipe": dataclasses.asdict(recipe),
            "train_seconds": round(train_seconds, 2), "log": loss_log}
    if chain is not None:
        info["chain"] = chain
    subject = Subject(model, tokenizer, name=kind, source=_source(kind, seed, steps), info=info)
    subject.info.update(evaluate(subject))
    with _cache.writing(CACHE_KIND, key, meta=_jsonable(subject.info)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if chain is not None:
            chain.save(tmp / CHAIN_FILE)
    return train_seconds


def evaluate(subject: Subject) -> dict:
    """Held-out ground truth for an organism (data seed ``HELD_OUT_SEED + seed``, never trained on).

    bigram_backcopy: ``triggers``, ``sink_head`` (0, 0) and ``metrics``: copy accuracy at
    trigger positions, attention of the sink head to BOS from non-trigger and trigger queries,
    to the previous token from trigger queries, value-drain ratio, held-out loss.
    induction: ``prev_token_head`` (0, h) and ``induction_head`` (1, h), the best heads by
    the METHODS sec 10 scores, and ``metrics``: every head's scores, loss and accuracy on the
    repeated part.
    """
    kind, seed = subject.info["kind"], subject.info["seed"]
    model = subject.model
    held_out = HELD_OUT_SEED + seed
    if kind == "bigram_backcopy":
        chain: BigramChain = subject.info["chain"]
        tokens, _ = bigram_backcopy_data(256, RECIPES[kind].seq_len, seed=held_out, chain=chain)
        patterns, values = attention_patterns(model, tokens)
        attn = sink_attention(patterns, tokens, chain.triggers, layer=0, head=0)
        metrics = {
            "copy_accuracy": copy_accuracy(model, tokens, chain.triggers),
            "bos_attention_non_trigger": attn["to_bos_non_trigger"],
            "bos_attention_trigger": attn["to_bos_trigger"],
            "prev_attention_trigger": attn["to_prev_trigger"],
            "value_drain_ratio": float(value_drain_ratio(model, values)[0, 0]),
            "loss": masked_loss(model, tokens),
            "loss_after_trigger": masked_loss(model, tokens, follows_trigger(tokens, chain.triggers)),
        }
        return {"triggers": list(chain.triggers), "sink_head": (0, 0), "metrics": metrics}
    if kind == "induction":
        tokens, periods = induction_data(256, RECIPES[kind].seq_len, seed=held_out)
        prev = previous_token_scores(attention_patterns(model, tokens)[0], layer=0)
        period = 20
        test = induction_test_data(256, period, seed=held_out)
        ind = induction_scores(attention_patterns(model, test)[0], period, layer=1)
        rep = repeat_mask(periods, tokens.shape[1])
        metrics = {
            "prev_token_scores": [round(float(s), 4) for s in prev],
            "induction_scores": [round(float(s), 4) for s in ind],
            "prev_token_scores_layer1": [round(float(s), 4) for s in previous_token_scores(
                attention_patterns(model, tokens)[0], layer=1)],
            "repeat_loss": masked_loss(model, tokens, rep),
            "repeat_accuracy": masked_accuracy(model, tokens, rep),
            "first_period_loss": masked_loss(model, tokens, ~rep),
        }
        return {"prev_token_head": (0, int(prev.argmax())), "induction_head": (1, int(ind.argmax())),
                "metrics": metrics}
    raise ValueError(f"not an organism: {subject.name!r} (info kind {kind!r})")


def make_tokenizer():
    """The organisms' tokenizer: whitespace-separated ``t00``..``t63``, ``<bos>`` prepended.

    ``tokenizer("t03 t17")["input_ids"] == [64, 3, 17]``. ``<pad>`` pads; unknown words map to
    ``<unk>`` (the model never saw it). Saves and loads with save_pretrained/from_pretrained.
    """
    vocab = {name: i for i, name in enumerate(TOKEN_NAMES)} | SPECIAL_TOKENS
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    return _lazy.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=max(r.seq_len for r in RECIPES.values()),
    )


# --- training -------------------------------------------------------------------------------
def _config(recipe: Recipe):
    """GPT-2 config for a recipe: learned positions, pre-LayerNorm, untied unembedding, no dropout.

    Unlike the papers' models GPT-2 has biases and a GELU MLP (Bigram-Backcopy), and a
    LayerNorm and an MLP at all (the induction recipe is attention-only); we keep the stock
    architecture so every workbench path runs on it unchanged.
    """
    return _lazy.GPT2Config(
        vocab_size=VOCAB_SIZE, n_positions=recipe.seq_len, n_embd=recipe.n_embd, n_layer=recipe.n_layer,
        n_head=recipe.n_head, n_inner=recipe.n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS_ID, eos_token_id=None, pad_token_id=PAD_ID, tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def _training_data(kind: str, recipe: Recipe, seed: int, steps: int, chain: BigramChain | None) -> torch.Tensor:
    """All training batches at once, ``[steps, batch, seq_len]``, from data seed ``TRAIN_SEED + seed``."""
    n = steps * recipe.batch
    if kind == "bigram_backcopy":
        tokens, _ = bigram_backcopy_data(n, recipe.seq_len, seed=TRAIN_SEED + seed, chain=chain)
    else:
        tokens, _ = induction_data(n, recipe.seq_len, seed=TRAIN_SEED + seed)
    return tokens.view(steps, recipe.batch, recipe.seq_len)


def _fit(kind: str, recipe: Recipe, seed: int, steps: int, *, chain: BigramChain | None, progress: bool):
    """Train a fresh model; returns it (eval mode) and the loss log ``[[step, mean loss], ...]``."""
    data = _training_data(kind, recipe, seed, steps, chain)
    # fork_rng: seeding the init must not reset the caller's global RNG.
    with torch.random.fork_rng(devices=[]), _deterministic():
        torch.manual_seed(seed)
        model = _lazy.GPT2LMHeadModel(_config(recipe)).train()
        if recipe.init == "torch":
            _torch_default_init(model)
        if recipe.attention_only:
            for block in model.transformer.h:
                for p in block.mlp.parameters():
                    p.data.zero_()
                    p.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=recipe.weight_decay,
                                betas=recipe.betas)
        loss_log, window = [], []
        bar = tqdm(range(steps), desc=f"training {kind} (seed {seed})", disable=not progress, leave=False)
        for step in bar:
            batch = data[step]
            logits = model(input_ids=batch).logits
            # Loss on every position (METHODS sec 2): inputs x[:-1], targets x[1:].
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(loss.item())
            if (step + 1) % recipe.log_every == 0 or step + 1 == steps:
                loss_log.append([step + 1, round(sum(window) / len(window), 5)])
                window.clear()
                bar.set_postfix(loss=f"{loss_log[-1][1]:.3f}")
        bar.close()
    return model.eval(), loss_log


def _torch_default_init(model) -> None:
    """Re-draw every weight as PyTorch's own layers would (GPT-2's ``Conv1D`` stores ``[in, out]``)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Embedding, torch.nn.Linear, torch.nn.LayerNorm)):
                module.reset_parameters()
            elif isinstance(module, _lazy.Conv1D):
                bound = 1.0 / math.sqrt(module.weight.shape[0])
                module.weight.uniform_(-bound, bound)
                module.bias.uniform_(-bound, bound)


@contextlib.contextmanager
def _deterministic():
    """Deterministic kernels while training; the caller's setting is restored on exit."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# --- cache ----------------------------------------------------------------------------------
def _load(entry) -> Subject:
    model = _lazy.GPT2LMHeadModel.from_pretrained(entry, dtype=torch.float32)
    tokenizer = _lazy.PreTrainedTokenizerFast.from_pretrained(entry)
    info = read_info(entry)
    if (entry / CHAIN_FILE).is_file():
        info["chain"] = BigramChain.load(entry / CHAIN_FILE)
    info["cache"] = str(entry)
    return Subject(model, tokenizer, name=info["kind"], source=_source(info["kind"], info["seed"], info["steps"]),
                   info=info)


def read_info(entry) -> dict:
    """The ground truth stored with a cache entry (JSON lists turned back into head tuples)."""
    info = _cache.read_meta(entry)
    for k in ("sink_head", "prev_token_head", "induction_head"):
        if k in info:
            info[k] = tuple(info[k])
    return info


def _same_recipe(entry, recipe: Recipe) -> bool:
    """False (with a warning) when a valid entry was trained with another recipe than today's."""
    stored = _cache.read_meta(entry).get("recipe")
    if stored == json.loads(json.dumps(dataclasses.asdict(recipe))):
        return True
    log.warning("organism cache entry %s was trained with another recipe: retraining", entry)
    return False


def _jsonable(info: dict) -> dict:
    """``info`` without the objects JSON cannot hold (the chain goes to its own file)."""
    out = {k: v for k, v in info.items() if k != "chain"}
    json.dumps(out)  # fail here, not halfway through sealing the entry
    return out


def _source(kind: str, seed: int, steps: int) -> str:
    return f"lens.model.organisms.train({kind!r}, seed={seed}, steps={steps})"


__all__ = [
    "BOS_ID",
    "KINDS",
    "N_TOKENS",
    "PAD_ID",
    "RECIPES",
    "UNK_ID",
    "VOCAB_SIZE",
    "BigramChain",
    "Recipe",
    "attention_patterns",
    "bigram_backcopy_data",
    "bigram_chain",
    "copy_accuracy",
    "evaluate",
    "follows_trigger",
    "induction_data",
    "induction_scores",
    "induction_test_data",
    "make_tokenizer",
    "previous_token_scores",
    "repeat_mask",
    "sink_attention",
    "train",
    "trigger_mask",
    "value_drain_ratio",
]
