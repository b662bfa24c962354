"""fedrs.methods."""
