"""probes: see README."""
