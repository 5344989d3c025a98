"""The computational graph circuits are made of: nodes, edges, and the order they run in.

Nodes (names as in EAP/ACDC code): ``"input"`` (token + position embeddings, the residual
stream before block 0), ``"a{layer}.h{head}"`` (one attention head's output, i.e. its
slice of the output projection's input times that slice of the projection), ``"m{layer}"``
(an MLP's output) and ``"logits"`` (the input of the final norm). The residual stream is
the sum of the senders' outputs (plus biases, which cancel in every difference we take),
so an edge ``s -> r`` is the term ``s`` contributes to receiver ``r``'s input.

Receivers read: a head, the residual before its block (its own copy: q, k and v of that
head); an MLP, the residual after its layer's attention; the logits, the final residual.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

INPUT = "input"
LOGITS = "logits"


def head_node(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def mlp_node(layer: int) -> str:
    return f"m{layer}"


def parse_node(name: str) -> tuple[str, int | None, int | None]:
    """``("input"|"head"|"mlp"|"logits", layer, head)`` for a node name; ValueError if malformed."""
    if name in (INPUT, LOGITS):
        return name, None, None
    try:
        if name.startswith("a") and ".h" in name:
            layer, head = name[1:].split(".h")
            return "head", int(layer), int(head)
        if name.startswith("m"):
            return "mlp", int(name[1:]), None
    except ValueError:
        pass
    raise ValueError(f"not a node name: {name!r} (expected 'input', 'logits', 'a<layer>.h<head>' or 'm<layer>')")


@dataclass(frozen=True)
class Graph:
    """Nodes and edges of a model with ``n_layers`` blocks of ``n_heads`` heads (and MLPs if ``has_mlp``).

    ``senders``: nodes whose output enters the residual stream, in computation order.
    ``receivers``: nodes that read it, in computation order. ``edges``: every (sender,
    receiver) pair where the sender runs first (a head feeds the MLP of its own layer).
    """

    n_layers: int
    n_heads: int
    has_mlp: bool = True

    @classmethod
    def of(cls, subject) -> Graph:
        return cls(subject.n_layers, subject.n_heads, subject.arch.mlp is not None)

    @cached_property
    def senders(self) -> tuple[str, ...]:
        out = [INPUT]
        for layer in range(self.n_layers):
            out += [head_node(layer, h) for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(mlp_node(layer))
        return tuple(out)

    @cached_property
    def receivers(self) -> tuple[str, ...]:
        return self.senders[1:] + (LOGITS,)

    @cached_property
    def sender_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.senders)}

    @cached_property
    def receiver_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.receivers)}

    def _order(self, name: str) -> float:
        """Position in computation order: heads of layer l at 3l+1, its MLP at 3l+2."""
        kind, layer, _ = parse_node(name)
        if kind == INPUT:
            return 0
        if kind == LOGITS:
            return 3 * self.n_layers + 1
        return 3 * layer + (1 if kind == "head" else 2)

    def can_send(self, sender: str, receiver: str) -> bool:
        """True when ``sender``'s output is part of ``receiver``'s input."""
        return self._order(sender) < self._order(receiver)

    @cached_property
    def edges(self) -> tuple[tuple[str, str], ...]:
        return tuple((s, r) for r in self.receivers for s in self.senders if self.can_send(s, r))

    def check_node(self, name: str) -> None:
        kind, layer, head = parse_node(name)
        if kind in (INPUT, LOGITS):
            return
        if not 0 <= layer < self.n_layers or (kind == "head" and not 0 <= head < self.n_heads):
            raise ValueError(f"node {name!r} does not exist: layers 0..{self.n_layers - 1}, "
                             f"heads 0..{self.n_heads - 1}")
        if kind == "mlp" and not self.has_mlp:
            raise ValueError(f"node {name!r}: this model has no MLPs")

    def check_edge(self, sender: str, receiver: str) -> None:
        self.check_node(sender)
        self.check_node(receiver)
        if sender == LOGITS or receiver == INPUT or not self.can_send(sender, receiver):
            raise ValueError(f"no edge {sender} -> {receiver}: the sender must run before the receiver")
