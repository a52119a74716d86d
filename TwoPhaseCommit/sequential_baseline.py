"""The baseline bench.py measures 2PC against: call the two services one after the other.

    python TwoPhaseCommit/sequential_baseline.py --port 5003 \\
        --inventory http://127.0.0.1:5001 --delivery http://127.0.0.1:5002

POST /orders takes the food (`POST /apply` at InventoryService: reserve and
sell in one local transaction), then books the rider the same way at
DeliveryService. No votes, no decision log, no recovery: half the messages
and a third of the fsyncs of 2PC, and no way back. If delivery refuses, or
crashes after the food was taken, the order stays half done. (Calling
inventory again to give the food back would make this a Saga, which narrows
that window but cannot close it: the undo can fail too.) See the README's
"The benchmark".
"""

from __future__ import annotations

import argparse
import sys
import uuid

from flask import Flask, jsonify
from twopc_node import (
    Faults,
    Messenger,
    Unreachable,
    add_participant_url_args,
    bind,
    check_order,
    json_object,
    new_app,
    participant_urls,
    serve_until_signalled,
)

DEFAULT_PORT = 5003
CALL_TIMEOUT = 2.0  # s for one call to a service, like the coordinator's vote timeout


def create_app(participants: dict[str, str]) -> Flask:
    faults = Faults(())
    messenger = Messenger(faults.messages)
    app = new_app("sequential", None, messenger, faults)

    def apply(name: str, txid: str, order: dict) -> tuple[bool, str]:
        body = {"txid": txid, "order": order}
        try:
            status, reply = messenger.call(
                "POST", f"{participants[name]}/apply", CALL_TIMEOUT, body
            )
        except Unreachable as err:
            return False, str(err)
        return status == 200 and reply.get("applied") is True, reply.get("reason", "")

    @app.post("/orders")
    def place_order():
        order = check_order(json_object())
        txid = uuid.uuid4().hex[:12]
        done = []
        for name in participants:  # inventory first, then delivery
            ok, reason = apply(name, txid, order)
            if not ok:
                # Whatever the earlier services did stays done: nobody undoes it.
                return jsonify(
                    txid=txid, outcome="failed", reason=f"{name}: {reason}", applied_at=done
                )
            done.append(name)
        return jsonify(txid=txid, outcome="committed", reason="", applied_at=done)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Orders without 2PC: one service, then the other.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0 = free)")
    add_participant_url_args(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    participants = participant_urls(parser, args)
    serve_until_signalled(bind(create_app(participants), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
