# %% [markdown]
# # Attention sinks and active/dormant heads
#
# Two subjects, the same questions (METHODS.md sections 1 and 2):
#
# 1. **SmolLM2-135M-Instruct**, a real pretrained model: how much of its attention lands on the
#    first token (the *sink metric*), which heads are *dormant* (parked on position 0), whether
#    the parked attention writes anything (*value drains*), and the *massive activations* that
#    come with it.
# 2. **The Bigram-Backcopy organism**, a one-layer GPT-2 trained here on a task whose answer we
#    know: its single head must copy the previous token after a *trigger* token and has nothing
#    to do elsewhere. So it should be *active* at trigger queries and *dormant* at all others
#    (its output there must not matter; it typically parks attention on BOS). This is the ground
#    truth the analyzers are checked against.
#
# Everything below is computed on this machine; rerun any cell to regenerate the numbers.

# %%
import os
import time

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch

import lens
from lens import viz
from lens import analyzers as A

# CI runs every notebook on 2 cores; more threads only add overhead at these sizes.
# On a busy machine set LENS_NOTEBOOK_THREADS=1: oversubscribed threads are much slower.
torch.set_num_threads(int(os.environ.get("LENS_NOTEBOOK_THREADS", max(1, min(2, os.cpu_count() or 1)))))
pd.set_option("display.width", 140)
pd.set_option("display.max_columns", 20)

# %% [markdown]
# ## 1. SmolLM2: capture, then analyze
#
# `lens.capture` runs the model once with the workbench's attention function, which records
# per-head statistics without keeping the full `layer x head x T x T` pattern. The sink metric is
# defined at T = 64 (METHODS sec 1), so every prompt is cut to exactly 64 tokens (BOS included).
# `lens.analyze` runs every analyzer whose statistics the capture holds and prints one screen.

# %%
from lens.data import prompts

subject = lens.load("smollm2")
print(subject)
ids = prompts(8, tokens=64, tokenizer=subject.tokenizer)
t0 = time.perf_counter()
cap = lens.capture(subject, ids)
print(f"captured {cap.n_inputs} prompts x {cap.tokens.shape[1]} tokens in {time.perf_counter() - t0:.1f} s")
atlas = lens.analyze(cap)
print(atlas)

# %% [markdown]
# ### The sink metric
#
# `alpha_j` is the mean attention key `j` receives from the queries that can see it;
# `Sink_1^0.3` is the share of (prompt, layer, head) where `alpha_0 > 0.3`. Uniform causal
# attention would give `alpha_0 = H_T / T = 0.074` at T = 64, so anything far above that is a
# learned sink. The grid shows `alpha_0` per head: most of SmolLM2 parks heavily on the first
# token, except for a few heads in the first layers.

# %%
T = 64
uniform = sum(1 / k for k in range(1, T + 1)) / T
sinks = atlas["sinks"]
print(f"Sink_1^0.3 = {sinks.summary['sink_rate']:.1f}%   mean alpha_0 = {sinks.summary['mean_alpha']:.3f}"
      f"   (uniform causal attention: alpha_0 = {uniform:.3f})")
grid = sinks.frame.pivot(index="layer", columns="head", values="sink_alpha")
fig = px.imshow(grid, color_continuous_scale="Viridis", zmin=0, zmax=1, aspect="auto",
                labels=dict(color="alpha_0"), title="SmolLM2: mean attention to the first token per head")
viz.show(fig)
per_layer = pd.Series(sinks.summary["per_layer_rate"], name="Sink rate %")
print("layers with the lowest sink rate:", per_layer.nsmallest(4).round(1).to_dict())
assert sinks.summary["sink_rate"] > 30 and sinks.summary["mean_alpha"] > 3 * uniform

# %% [markdown]
# ### Dormant and active heads
#
# A head is dormant on an input when `s(x) = mean_{i>=1} A[i, 0] >= 0.5`. Counting over the 8
# prompts, a head is *dormant* (on every prompt), *active* (on none) or *active-dormant* (it
# switches with the input: the interesting ones).

# %%
dh = atlas["dormant_heads"]
print(dh.text)
print(dh.frame["state"].value_counts().to_string())
print("active-dormant heads:", dh.summary["active_dormant_heads"][:12])
fig = px.imshow(dh.frame.pivot(index="layer", columns="head", values="dormant_share"), zmin=0, zmax=1,
                color_continuous_scale="RdBu_r", aspect="auto", labels=dict(color="share dormant"),
                title="share of prompts on which each head is dormant (s(x) >= 0.5)")
viz.show(fig)

# %% [markdown]
# The attention score alone does not prove a head is idle. METHODS sec 2 adds a loss check:
# move all of the head's attention to position 0 (`MoveToBOS`) and see whether the loss moves
# by less than 1 %. That needs the model, so it lives in `lens.experiments` (`confirm_dormant`), not among
# the pure analyzers. We test the three heads with the strongest sink and the three with the weakest.

# %%
from lens.experiments import confirm_dormant

ranked = dh.frame.dropna().sort_values("sink_score")
heads = [(int(r.layer), int(r.head)) for r in pd.concat([ranked.tail(3), ranked.head(3)]).itertuples()]
check = confirm_dormant(subject, ids[:4], heads=heads, capture=None)
table = check.frame.groupby(["layer", "head"]).agg(sink_score=("sink_score", "mean"),
                                                     rel_loss_change=("rel_change", "mean"),
                                                     dormant_share=("dormant", "mean"))
print(check.text)
print(table.round(4))

# %% [markdown]
# ### Value drains: the parked attention writes (almost) nothing
#
# For each head, `||W_O^h v_0|| / mean_{j>=1} ||W_O^h v_j||`: how large the value written from
# position 0 is compared to the other positions. Heads that attend position 0 the most should
# have the smallest ratio: attention parked on a near-zero value is a no-op.

# %%
heads_table = atlas.to_frame()
fig = px.scatter(heads_table, x="sink_score", y="value_drain", color="layer", log_y=True,
                 hover_data=["layer", "head"], title="sink score vs value-drain ratio, one point per head")
viz.show(fig)
rho = heads_table[["sink_score", "value_drain"]].corr(method="spearman").iloc[0, 1]
print(f"Spearman correlation(sink score, value-drain ratio) = {rho:.2f}")
print("median value-drain ratio by head state:")
print(heads_table.groupby("state")["value_drain"].median().round(3).to_string())
assert rho < -0.3, "heads that park on position 0 should have the smaller values there"

# %% [markdown]
# ### Massive activations and the residual peak
#
# A few hidden dimensions of the residual stream at the first token grow to hundreds while the
# median entry stays near 1 (METHODS sec 10). They appear after the first layers and stay; the
# residual norm of position 0 towers over every other position (the *residual peak*).

# %%
ma = atlas["massive_activations"]
rp = atlas["residual_peaks"]
print("massive activations:", ma.text)
print("residual peaks:     ", rp.text)
print(ma.frame[["layer", "top_abs", "top_dim", "top_pos", "median", "ratio"]].iloc[::3].round(2).to_string(index=False))
fig = go.Figure()
fig.add_scatter(x=ma.frame["layer"], y=ma.frame["top_abs"], name="largest |h| entry")
fig.add_scatter(x=ma.frame["layer"], y=ma.frame["median"], name="median |h|")
fig.add_scatter(x=rp.frame["layer"], y=rp.frame["peak_ratio"], name="||h_0|| / max_j>=1 ||h_j||")
fig.update_layout(yaxis_type="log", xaxis_title="layer", title="SmolLM2: massive activations and residual peak")
viz.show(fig)

# %% [markdown]
# ## 2. The Bigram-Backcopy organism: ground truth
#
# `lens.model.organisms.train` trains the organism once and caches it (about a minute the first time on
# 2 cores, a second afterwards). Its `info` holds what we know by construction: the trigger tokens
# and the sink head `(0, 0)`, plus metrics measured on held-out data when it was trained.

# %%
bb = lens.model.organisms.train("bigram_backcopy", seed=0, progress=False)
triggers = bb.info["triggers"]
print(bb)
print("triggers:", [bb.tokenizer.decode([t]) for t in triggers])
print({k: round(v, 3) for k, v in bb.info["metrics"].items()})
tokens, data = lens.model.organisms.bigram_backcopy_data(32, 64, seed=11, chain=bb.info["chain"])
cap_bb = lens.capture(bb, tokens)
print(lens.analyze(cap_bb))

# %% [markdown]
# ### Active at triggers, dormant elsewhere
#
# `sink_scores(capture, queries=mask)` restricts `s(x)` to chosen queries. At trigger queries the
# head must look one token back (to copy `x_{t-1}` as the next token); everywhere else it has no
# job. `dormant_inputs` with the two masks turns the attention on BOS into a state per input
# (dormant when `s(x) >= 0.5`). This organism parks almost all idle attention on BOS (0.995 on
# held-out data); the loss check further down is the decisive test that the parked head is idle.

# %%
trig = data["is_trigger"]
later = torch.arange(tokens.shape[1])[None] >= 1
to_bos = cap_bb.stats["sink_mass"][:, 0, 0]
to_prev = cap_bb.stats["prev_token"][:, 0, 0]
rows = []
for name, mask in [("trigger queries", trig & later), ("non-trigger queries", ~trig & later)]:
    rows.append({"queries": name, "n": int(mask.sum()), "attention to BOS": float(to_bos[mask].mean()),
                 "attention to previous token": float(to_prev[mask].mean())})
print(pd.DataFrame(rows).round(3).to_string(index=False))
split = A.dormant_inputs(cap_bb, cap_bb, queries=[trig, ~trig])
state = split.frame.groupby("capture")["state"].value_counts().unstack(fill_value=0)
state.index = ["trigger queries", "non-trigger queries"]
print(state)
m = pd.DataFrame(rows).set_index("queries")
assert m.loc["trigger queries", "attention to previous token"] > 0.5, "trigger queries should attend x_{t-1}"
assert m.loc["trigger queries", "attention to BOS"] < m.loc["non-trigger queries", "attention to BOS"]
assert m.loc["non-trigger queries", "attention to BOS"] > 0.5, "non-trigger queries should park on BOS"

# %%
b = 0
n = int(cap_bb.lengths[b])
strip = pd.DataFrame({"pos": range(1, n), "token": cap_bb.str_tokens[b][1:n],
                      "to BOS": to_bos[b, 1:n].numpy(), "to previous token": to_prev[b, 1:n].numpy(),
                      "trigger": trig[b, 1:n].numpy()})
fig = px.bar(strip.melt(id_vars=["pos", "token", "trigger"], var_name="attention", value_name="mass"),
             x="pos", y="mass", color="attention", barmode="group", hover_data=["token", "trigger"],
             title="head (0, 0) on one sequence: at triggers (shaded) it attends the previous token")
for p in strip.loc[strip["trigger"], "pos"]:
    fig.add_vrect(x0=p - 0.5, x1=p + 0.5, fillcolor="orange", opacity=0.25, line_width=0)
viz.show(fig)

# %% [markdown]
# ### The loss check per position, and the value drain
#
# Moving the head's attention to BOS everywhere should cost nothing where it was already dormant
# and destroy the back-copy right after a trigger. We measure the loss separately on the two kinds
# of target positions, with the edit applied through `subject.edited`.

# %%
import torch.nn.functional as F

def token_losses(model, toks):
    with torch.no_grad():
        logits = model(input_ids=toks).logits[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), toks[:, 1:], reduction="none")  # [batch, pos - 1]

after_trigger = data["follows_trigger"][:, 1:]
base = token_losses(bb.model, tokens)
with bb.edited(lens.edits.MoveToBOS(layer=0, head=0)):
    moved = token_losses(bb.model, tokens)
table = pd.DataFrame({
    "targets": ["right after a trigger (back-copy)", "all other positions"],
    "loss": [float(base[after_trigger].mean()), float(base[~after_trigger].mean())],
    "loss, head moved to BOS": [float(moved[after_trigger].mean()), float(moved[~after_trigger].mean())],
})
table["relative change"] = table["loss, head moved to BOS"] / table["loss"] - 1
print(table.round(3).to_string(index=False))
vd = A.value_drains(cap_bb)
print(f"value-drain ratio of head (0, 0): {float(vd.frame['value_drain'][0]):.3f} "
      f"(at training time, held-out: {bb.info['metrics']['value_drain_ratio']:.3f})")
rel = table.set_index("targets")["relative change"]
assert rel.iloc[0] > 1.0, "moving the head to BOS must break the back-copy"
assert abs(rel.iloc[1]) < 0.01, "and cost (almost) nothing where the head is idle"
assert float(vd.frame["value_drain"][0]) < 0.3, "the parked-on value should be drained"

# %% [markdown]
# **What to take away.** In SmolLM2 almost every head beyond the first layers parks most of its
# attention on the first token, and those heads have the smallest value vectors at that token: the
# parked attention is a no-op, which is what *dormant* means. The organism shows the mechanism
# in miniature with the answer known: one head, active exactly at triggers (attending the previous
# token) and idle elsewhere: moving its attention to BOS multiplies the loss at the back-copy
# positions and leaves every other position unchanged. The attention threshold alone (`s(x) >= 0.5`)
# can miss such idleness when the idle attention is spread out instead of parked on BOS; the loss
# check does not.
