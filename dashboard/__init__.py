"""dashboard: see README."""
