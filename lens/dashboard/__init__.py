"""dashboard: a multi-page Dash app over the workbench (Overview, Attention, Reasoning, Interventions,
Circuits, Probes, Runs, Census). It holds no analysis of its own: callbacks call ``lens`` and draw with ``viz``.

``create_app(subject or model name or None, captures=, store=, runs=)`` builds the app (tests,
notebooks); ``serve`` runs it (``lens dashboard``), bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging

from lens.dashboard._app import create_app

__all__ = ["create_app", "serve"]


def serve(model: str | None = "smollm2", host: str = "127.0.0.1", port: int = 8050, debug: bool = False,
          max_tokens: int | None = None, captures=(), store=None, runs=None, device=None, dtype="auto",
          device_map=None) -> None:
    """Load ``model`` (or none: "none") and serve the dashboard on http://host:port (blocks until interrupted).

    captures: saved Capture directories to open; store: a store directory for the Census page;
    runs: the DuckDB file of ``lens run`` (default ./runs.duckdb when present).

    Why eleven parameters: one per option of ``lens dashboard``, which calls it by keyword.
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("lens.dashboard").warning(
            "serving on %s: anyone who can reach this address can run the model", host)
    app = create_app(model, captures=captures, store=store, runs=runs, max_tokens=max_tokens, device=device,
                     dtype=dtype, device_map=device_map)
    ctx = app._lens_context
    extra = "".join([f"; {len(ctx.saved)} saved capture(s)" if ctx.saved else "",
                     f"; store {ctx.store.path}" if ctx.store else "", f"; runs {ctx.runs}" if ctx.runs else ""])
    print(f"attention workbench dashboard on http://{host}:{port}  (model {ctx.model} on {ctx.placement}{extra}; "
          "Ctrl+C to stop)")
    app.run(host=host, port=port, debug=debug, use_reloader=False)
