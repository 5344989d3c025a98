"""viz: plotly figures from Findings and Captures (no model calls).

Every builder is a pure function ``(Findings | Capture | table) -> plotly.graph_objects.Figure``;
the dashboard and the notebooks use the same ones. Head grids, patterns and token strips
read the analyzers' tables and the Capture's statistics (``lens.record._data`` lists
their shapes); ``export`` writes PNG/SVG offline through kaleido and the system chromium.
"""

from lens.viz._activations import massive_profile
from lens.viz._census import head_distributions, run_comparison, sweep_heatmap
from lens.viz._compare import distribution_shift, next_token_comparison
from lens.viz._export import export, find_browser
from lens.viz._graphs import circuit_graph, node_layer, probe_curves
from lens.viz._heads import active_dormant_matrix, entropy_by_layer, head_grid
from lens.viz._positions import decimate, position_plot
from lens.viz._patterns import PatternView, attention_pattern, pattern_comparison, pattern_heatmap, pattern_view
from lens.viz._show import show
from lens.viz._tokens import reasoning_profile, token_strip

__all__ = [
    "PatternView", "active_dormant_matrix", "attention_pattern", "circuit_graph", "decimate", "distribution_shift",
    "entropy_by_layer", "export", "find_browser", "head_grid", "massive_profile", "next_token_comparison",
    "node_layer", "pattern_comparison", "pattern_heatmap", "pattern_view", "position_plot", "probe_curves",
    "reasoning_profile",
    "show", "token_strip",
    "head_distributions", "run_comparison", "sweep_heatmap",
]
