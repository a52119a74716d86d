"""DeliveryService: the riders, a 2PC participant with its own SQLite database.

    python TwoPhaseCommit/DeliveryService.py --port 5002 --riders 3

A prepare books the first free rider for the order (free -> reserved); commit
assigns them (reserved -> assigned); abort frees them again. A reserved rider
is not free, so no rider is ever booked for two orders. GET /riders shows them;
POST /riders {"count": 2} brings two more riders on shift.
The protocol itself is in twopc_participant.py; see the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import apsw
import twopc_disk
import twopc_participant
from flask import abort, jsonify
from twopc_node import (
    OUT_DIR,
    DurableStore,
    add_server_args,
    check_server_args,
    is_text,
    json_object,
    text_error,
)
from twopc_participant import Participant, Refused

DEFAULT_PORT = 5002
DEFAULT_DB = OUT_DIR / "delivery.db"  # git-ignored, created on first use
DEFAULT_RIDERS = 3
MAX_RIDERS = 100_000
RIDER_NAMES = ["Ana", "Bo", "Chen", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivo", "Jun"]

RIDERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS riders (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    status  TEXT NOT NULL DEFAULT 'free' CHECK (status IN ('free', 'reserved', 'assigned')),
    txid    TEXT,  -- the order holding this rider, while reserved or assigned
    address TEXT
);
CREATE INDEX IF NOT EXISTS riders_by_status ON riders (status, id);
"""


class Riders:
    """The Resource hooks: what booking, assigning and freeing a rider means."""

    name = "delivery"

    def reserve(self, db: apsw.Connection, txid: str, order: dict) -> dict:
        address = order.get("address")
        if not is_text(address):
            raise Refused(text_error("address"))
        rider = db.execute(
            "SELECT id, name FROM riders WHERE status = 'free' ORDER BY id LIMIT 1"
        ).fetchone()
        if rider is None:
            raise Refused("no free rider")
        db.execute(
            "UPDATE riders SET status = 'reserved', txid = ?, address = ? WHERE id = ?",
            (txid, address, rider["id"]),
        )
        return {"rider": rider["id"], "name": rider["name"]}

    def make_permanent(self, db: apsw.Connection, txid: str, detail: dict) -> None:
        db.execute("UPDATE riders SET status = 'assigned' WHERE id = ?", (detail["rider"],))

    def release(self, db: apsw.Connection, txid: str, detail: dict) -> None:
        db.execute(
            "UPDATE riders SET status = 'free', txid = NULL, address = NULL WHERE id = ?",
            (detail["rider"],),
        )


def open_store(db: Path, riders: int, disk: twopc_disk.Disk) -> DurableStore:
    """Open the database; a new one gets `riders` free riders, an existing one keeps its own."""
    store = DurableStore(db, twopc_participant.TRANSACTIONS_SCHEMA + RIDERS_SCHEMA, disk)
    with store.transaction() as conn:
        if conn.execute("SELECT count(*) AS n FROM riders").fetchone()["n"] == 0:
            conn.executemany("INSERT INTO riders (id, name) VALUES (?, ?)", new_riders(0, riders))
    return store


def new_riders(last_id: int, count: int) -> list[tuple[int, str]]:
    ids = range(last_id + 1, last_id + count + 1)
    return [(i, f"{RIDER_NAMES[(i - 1) % len(RIDER_NAMES)]} #{i}") for i in ids]


def create_app(participant: Participant):
    app = twopc_participant.create_app(participant)

    @app.post("/riders")
    def start_shift():
        """Riders come on shift: {"count": n} adds n free riders."""
        count = json_object().get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_RIDERS:
            abort(400, f"count must be 1..{MAX_RIDERS}")
        with participant.store.transaction() as db:
            last = db.execute("SELECT coalesce(max(id), 0) AS last FROM riders").fetchone()["last"]
            db.executemany("INSERT INTO riders (id, name) VALUES (?, ?)", new_riders(last, count))
        return riders()

    @app.get("/riders")
    def riders():
        rows = participant.store.read("SELECT * FROM riders ORDER BY id")
        counts = {status: 0 for status in ("free", "reserved", "assigned")}
        for r in rows:
            counts[r["status"]] += 1
        return jsonify(counts=counts, riders=rows)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The rider service: a 2PC participant.")
    add_server_args(parser, DEFAULT_PORT, DEFAULT_DB)
    parser.add_argument(
        "--riders",
        type=int,
        default=DEFAULT_RIDERS,
        help=f"riders in a new database (default {DEFAULT_RIDERS})",
    )
    twopc_participant.add_participant_args(parser)
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    twopc_participant.check_participant_args(parser, args)
    if not 0 <= args.riders <= MAX_RIDERS:
        parser.error(f"--riders must be 0..{MAX_RIDERS}, got {args.riders}")
    return twopc_participant.serve(
        args, Riders(), lambda disk: open_store(args.db, args.riders, disk), create_app
    )


if __name__ == "__main__":
    sys.exit(main())
