"""viz: see README."""
