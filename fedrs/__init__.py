"""fedrs: Ray-based federated learning for CLIP on remote-sensing imagery."""

__version__ = "0.1.0"
