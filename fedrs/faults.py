"""Fault injection for chaos runs (``federation.faults``; ``fedrs bench chaos`` and tests).

A spec is ``;``-separated rules ``SITE@ROUND[:WHO]=ACTION``:

* ``SITE``: ``fit`` (a client's local training, on its actor), ``share`` (a client sharing
  with its partner organisations, before ``fit``), ``aggregate`` (the driver,
  mid-round: the clients' updates are in, the new global model not yet made) or
  ``checkpoint`` (the driver writing a round's checkpoint);
* ``ROUND``: a round number or ``*`` (every round);
* ``WHO`` (``fit`` and ``share`` only): a client id, or ``pP`` - each (round, client) with
  probability P, drawn from (round, client): deterministic, the same on every actor and rerun;
* ``ACTION``: ``exit`` (the process dies: a killed actor), ``sleep:S`` (a straggler),
  ``enospc`` (the disk is full), ``raise`` (an exception).

Empty (the default): nothing is ever injected. Example: ``fit@*:p0.2=exit;fit@2:1=sleep:30;
checkpoint@3=enospc``.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import numpy as np

from fedrs.errors import ConfigError

log = logging.getLogger(__name__)
SITES = ("fit", "share", "checkpoint", "aggregate")


def parse(spec: str) -> list[tuple[str, str, str, str]]:
    """``[(site, round, who, action)]``; a malformed rule is a one-line ConfigError."""
    rules = []
    for rule in (r.strip() for r in spec.split(";") if r.strip()):
        try:
            where, action = rule.split("=", 1)
            site, _, rest = where.partition("@")
            rnd, _, who = rest.partition(":")
            ok = site in SITES and (rnd == "*" or rnd.isdigit())
            ok = ok and (not who or who.isdigit() or (who[0] == "p" and 0 <= float(who[1:]) <= 1))
            kind, _, arg = action.partition(":")
            ok = (
                ok
                and kind in ("exit", "enospc", "raise", "sleep")
                and (kind != "sleep" or float(arg) >= 0)
            )
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                f"federation.faults rule {rule!r}: expected SITE@ROUND[:WHO]=ACTION with SITE in "
                f"{SITES}, ROUND a number or *, WHO a client id or pP, ACTION exit | sleep:S | "
                f"enospc | raise"
            )
        rules.append((site, rnd, who, action))
    return rules


def _matches(rnd: str, who: str, round_: int, client: int | None) -> bool:
    if rnd != "*" and int(rnd) != round_:
        return False
    if not who:
        return True
    if client is None:
        return False
    if who[0] == "p":
        draw = np.random.default_rng([0xFA17, round_, client]).random()
        return bool(draw < float(who[1:]))
    return int(who) == client


def inject(spec: str, site: str, round_: int, client: int | None = None) -> None:
    """Do what ``spec`` says for this site, round (and client), if anything."""
    if not spec:
        return
    for s, rnd, who, action in parse(spec):
        if s != site or not _matches(rnd, who, round_, client):
            continue
        kind, _, arg = action.partition(":")
        log.warning("fault injected: %s at round %d client %s: %s", site, round_, client, action)
        if kind == "exit":
            os._exit(137)
        if kind == "sleep":
            time.sleep(float(arg))
        elif kind == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        elif kind == "raise":
            raise RuntimeError(f"injected fault at {site} round {round_}")
