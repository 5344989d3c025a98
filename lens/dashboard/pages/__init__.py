"""Dashboard pages: one module each, with PATH, NAME, layout(ctx) and register(app, ctx)."""
