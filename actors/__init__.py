"""fedrs.actors."""
