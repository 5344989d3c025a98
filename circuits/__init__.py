"""circuits: see README."""
