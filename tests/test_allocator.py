"""``retain_freed_memory``: freed heap memory is reused by the next step, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate 800 blocks of 100 kB (heap, not mmap), touch them, free them, then do it again and
# count the page faults of the second pass: glibc's default trims the freed 80 MB off the heap
# top, so every page faults again; with the tuning nothing goes back and nothing faults.
_SCRIPT = """
import ctypes, resource, sys
from fedrs.actors.allocator import retain_freed_memory
if sys.argv[1] == "tuned":
    assert retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def step():
    blocks = [libc.malloc(100_000) for _ in range(800)]
    for b in blocks:
        ctypes.memset(b, 1, 100_000)
    for b in blocks:
        libc.free(b)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_memory_is_reused_not_refaulted() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 10_000  # 80 MB / 4 KiB pages = 19,500 faults when the heap is trimmed
    assert tuned < 500


def test_setting_is_a_validated_config_field() -> None:
    from fedrs.core.config import ConfigError, RunConfig

    assert RunConfig().resources.retain_freed_memory is True
    off = RunConfig().replace(**{"resources.retain_freed_memory": False})
    assert off.resources.retain_freed_memory is False
    with pytest.raises(ConfigError):
        RunConfig().replace(**{"resources.retain_freed_memory": "sometimes"})
