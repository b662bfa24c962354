"""fedrs's Flower ClientApp, light on purpose: Flower starts it in a new process for every
message, so it imports neither torch nor the model. It hands the message's content, as it came,
to the site's resident worker (``actors/site_worker.py``, started on the first message), which
keeps the site's backbone and data loaded, and returns the worker's answer; a failure is a
Flower error reply with its reason."""

from __future__ import annotations

import json
import logging
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrs.actors import secagg
from fedrs.actors.site_worker import WorkerError, forward

log = logging.getLogger(__name__)
CLIENT_APP_RAISED = 2  # flwr's ErrorCode.CLIENT_APP_RAISED_EXCEPTION

client_app = ClientApp()


def _answer(msg: Message, context: Context) -> Message:
    try:
        content = msg.content
        text = str(content["body"]["json"])
        arrays = {k: content["arrays"][k].numpy() for k in content["arrays"]}
        out, back = forward(dict(context.node_config), text, arrays)
        json.loads(out)  # a worker's answer is JSON text
        body = {"arrays": ArrayRecord({k: Array(v) for k, v in back.items()})}
        return Message(RecordDict({**body, "body": ConfigRecord({"json": out})}), reply_to=msg)
    except (WorkerError, KeyError, TypeError, ValueError, OSError) as exc:
        log.warning("site failed: %s", exc)
        return Message(Error(CLIENT_APP_RAISED, str(exc)), reply_to=msg)


def _sealed(node_config: dict) -> Any:
    """What the site's worker sealed for a round, as SecAgg+ asks for it (``secagg.py``)."""

    def fetch(config: dict) -> tuple[list, int]:
        keys = [k for k in str(config["fedrs.keys"]).split(",") if k]
        body = {"call": "sealed", "run": str(config["fedrs.run"]), "keys": keys}
        body["round"] = int(config["fedrs.round"])
        out, arrays = forward(node_config, json.dumps(body), {})
        got = json.loads(out)
        return [arrays[a["__nd__"]] for a in got["mean"]], int(got["weight"])

    return fetch


def _secure(msg: Message, context: Context) -> Message:
    """One stage of Flower's SecAgg+ on this site (``secagg.enabled``)."""
    node_config = dict(context.node_config)
    try:
        site = int(node_config.get("site", 0))
        return secagg.client_stage(msg, context, _sealed(node_config), site)
    except (WorkerError, KeyError, TypeError, ValueError, OSError) as exc:
        log.warning("secure aggregation failed on this site: %s", exc)
        return Message(Error(CLIENT_APP_RAISED, str(exc)), reply_to=msg)


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    """``describe`` (what this site serves) and ``init_global``."""
    return _answer(msg, context)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """``fit`` and ``share``: local training of this site's clients; the stages of SecAgg+."""
    if secagg.STAGES in msg.content.config_records:
        return _secure(msg, context)
    return _answer(msg, context)


@client_app.evaluate()
def client_evaluate(msg: Message, context: Context) -> Message:
    """``evaluate``, ``predict`` and ``discard``."""
    return _answer(msg, context)
