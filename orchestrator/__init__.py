"""fedrs.orchestrator."""
