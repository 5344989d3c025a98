"""Head-level edits (public names). See ``lens._edits`` for the algebra behind them."""

from lens._edits import AblateHead, Edit, GateHead, KeyBias, MoveToBOS, ScaleAttention, compile_edits

__all__ = ["AblateHead", "Edit", "GateHead", "KeyBias", "MoveToBOS", "ScaleAttention", "compile_edits"]
