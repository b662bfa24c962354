"""Named error types. Every user-facing failure is one of these, printed as one line by the CLI."""

from __future__ import annotations


class FedrsError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""


class ConfigError(FedrsError):
    """A configuration key is unknown or a value is invalid."""


class DataError(FedrsError):
    """A data source cannot be read (missing directory, corrupt image, bad caption file)."""


class PartitionError(FedrsError):
    """The requested partition cannot be made (too many clients, too few examples)."""


class ShardIntegrityError(FedrsError):
    """A shard or manifest on disk is truncated, tampered with, or not what the manifest says."""
