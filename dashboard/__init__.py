"""dashboard: a multi-page Dash app over the workbench (Overview, Attention, Reasoning, Interventions,
Circuits, Probes). It holds no analysis of its own: callbacks call ``lens`` and draw with ``viz``.

``create_app(subject or model name)`` builds the app (tests, notebooks); ``serve`` runs it
(``lens dashboard --model NAME``), bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from dashboard._app import create_app

__all__ = ["create_app", "serve"]


def serve(model: str = "smollm2", host: str = "127.0.0.1", port: int = 8050, debug: bool = False,
          max_tokens: int | None = None) -> None:
    """Load ``model`` and serve the dashboard on http://host:port (blocks until interrupted)."""
    import logging

    from dashboard._work import DEFAULT_MAX_TOKENS

    if host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("lens.dashboard").warning(
            "serving on %s: anyone who can reach this address can run the model", host)
    app = create_app(model, max_tokens=max_tokens or DEFAULT_MAX_TOKENS)
    print(f"attention workbench dashboard on http://{host}:{port}  (model {model}; Ctrl+C to stop)")
    app.run(host=host, port=port, debug=debug, use_reloader=False)
