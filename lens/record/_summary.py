"""A one-screen text summary of a Capture (per layer: sinks, entropy, distance, massive activations)."""

from __future__ import annotations

import torch

from lens.record._data import Capture


def _valid_queries(cap: Capture) -> torch.Tensor:
    """[batch, 1, 1, pos] mask of real tokens past position 0 (position 0 only sees itself)."""
    n = cap.tokens.shape[1]
    pos = torch.arange(n)
    return ((pos[None] < cap.lengths[:, None]) & (pos[None] >= 1))[:, None, None, :].float()


def per_head_mean(cap: Capture, name: str) -> torch.Tensor:
    """Mean of a per-query statistic over real queries i >= 1 and inputs: [layer, head]."""
    m = _valid_queries(cap)
    x = cap.stats[name]
    return (x * m).sum(dim=(0, 3)) / m.sum(dim=(0, 3)).clamp(min=1)


def summarize(cap: Capture, top: int = 5) -> str:
    lines = [repr(cap)]
    have = cap.stats
    if "sink_mass" in have:
        sink = per_head_mean(cap, "sink_mass")
        lines.append(f"mean attention on position 0 (queries i>=1, all heads): {sink.mean():.3f}")
        flat = sink.flatten().topk(min(top, sink.numel()))
        heads = ", ".join(f"L{cap.blocks[i // cap.n_heads]}H{i % cap.n_heads}={v:.2f}"
                          for v, i in zip(flat.values.tolist(), flat.indices.tolist()))
        lines.append(f"strongest sink heads: {heads}")
    header = f"{'layer':>5} {'sink':>6} {'ent_norm':>8} {'dist':>7} {'massive |x|':>11} {'(pos, dim)':>12} {'median':>7}"
    lines.append(header)
    attn = {block: i for i, block in enumerate(cap.blocks)}  # block number -> attention layer axis
    for layer in range(cap.n_blocks):  # one row a block; a hybrid model's blocks without attention show '-'
        i = attn.get(layer)
        cols = [f"{layer:>5}"]
        cols.append(f"{per_head_mean(cap, 'sink_mass')[i].mean():6.3f}"
                    if "sink_mass" in have and i is not None else f"{'-':>6}")
        cols.append(f"{per_head_mean(cap, 'entropy_norm')[i].mean():8.3f}"
                    if "entropy_norm" in have and i is not None else f"{'-':>8}")
        cols.append(f"{per_head_mean(cap, 'distance')[i].mean():7.1f}"
                    if "distance" in have and i is not None else f"{'-':>7}")
        if "massive_val" in have:
            v = have["massive_val"][0, layer, 0].item()
            p, d = have["massive_pos"][0, layer, 0].item(), have["massive_dim"][0, layer, 0].item()
            cols.append(f"{v:11.1f} {f'({p}, {d})':>12} {have['massive_median'][0, layer].item():7.3f}")
        lines.append(" ".join(cols))
    return "\n".join(lines)
