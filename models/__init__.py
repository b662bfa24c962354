"""fedrs.models."""
