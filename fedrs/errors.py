"""Named error types. Every user-facing failure is one of these, printed as one line by the CLI."""

from __future__ import annotations

import re


class FedrsError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""


class ConfigError(FedrsError):
    """A configuration key is unknown or a value is invalid."""


class RunStopped(FedrsError):
    """The run was asked to stop (Ctrl-C, SIGTERM): the round in flight is abandoned."""


class DataError(FedrsError):
    """A data source cannot be read (missing directory, corrupt image, bad caption file)."""


class PartitionError(FedrsError):
    """The requested partition cannot be made (too many clients, too few examples)."""


class ShardIntegrityError(FedrsError):
    """A shard or manifest on disk is truncated, tampered with, or not what the manifest says."""


_REMOTE_ERROR = re.compile(
    r"^((?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception))): (.+)$", re.M
)


def remote_error(exc: BaseException) -> FedrsError | None:
    """The error a Ray actor's creation (``__init__``) raised, rebuilt as one line from what
    Ray reports (its ``ActorDiedError`` carries only the remote traceback's text): a fedrs
    error keeps its type and message; anything else becomes a FedrsError naming its type.
    None when ``exc`` is not an actor that failed to start."""
    if not getattr(exc, "actor_init_failed", False):
        return None
    found = _REMOTE_ERROR.findall(str(exc))
    if not found:
        return FedrsError("an actor failed to start (see the worker log above)")
    path, name, message = found[-1]
    if path.startswith("fedrs."):
        import importlib

        module, _, cls_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            cls = FedrsError
        if isinstance(cls, type) and issubclass(cls, FedrsError):
            return cls(message)
    return FedrsError(f"an actor failed to start: {name}: {message}")
