"""InventoryService: the restaurant's stock, a 2PC participant with its own SQLite database.

    python TwoPhaseCommit/InventoryService.py --port 5001 --stock pizza=10,sushi=5

A prepare sets food aside (available -> reserved); commit sells it
(reserved -> sold); abort puts it back (reserved -> available). Reserved food
is not available, so a prepared order's pizzas cannot be sold twice.
For every item, available + reserved + sold never changes. GET /stock shows it.
The protocol itself is in twopc_participant.py; see the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import apsw
import twopc_disk
import twopc_participant
from flask import jsonify
from twopc_node import (
    OUT_DIR,
    DurableStore,
    Messenger,
    StoreError,
    add_server_args,
    check_server_args,
)
from twopc_participant import Participant, Refused, item_and_quantity

DEFAULT_PORT = 5001
DEFAULT_DB = OUT_DIR / "inventory.db"  # git-ignored, created on first use
DEFAULT_STOCK = "pizza=10,sushi=5,burger=8"
MAX_STOCK = 10**9  # of one item: SQLite's integers end at 2**63, a typo should end sooner

STOCK_SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    item      TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),  -- free to reserve
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),  -- held by PREPARED orders
    sold      INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)  -- taken by COMMITTED orders
);
"""


class Stock:
    """The Resource hooks: what reserving, selling and releasing food means."""

    name = "inventory"

    def reserve(self, db: apsw.Connection, txid: str, order: dict) -> dict:
        item, quantity = item_and_quantity(order)
        row = db.execute("SELECT available FROM stock WHERE item = ?", (item,)).fetchone()
        if row is None:
            raise Refused(f"unknown item {item!r}")
        if row["available"] < quantity:
            raise Refused(f"out of stock: {quantity} {item} wanted, {row['available']} available")
        db.execute(
            "UPDATE stock SET available = available - ?, reserved = reserved + ? WHERE item = ?",
            (quantity, quantity, item),
        )
        return {"item": item, "quantity": quantity}

    def make_permanent(self, db: apsw.Connection, txid: str, detail: dict) -> None:
        db.execute(
            "UPDATE stock SET reserved = reserved - ?, sold = sold + ? WHERE item = ?",
            (detail["quantity"], detail["quantity"], detail["item"]),
        )

    def release(self, db: apsw.Connection, txid: str, detail: dict) -> None:
        db.execute(
            "UPDATE stock SET reserved = reserved - ?, available = available + ? WHERE item = ?",
            (detail["quantity"], detail["quantity"], detail["item"]),
        )


def parse_stock(text: str) -> dict[str, int]:
    """ "pizza=10,sushi=5" -> {"pizza": 10, "sushi": 5}; ValueError says what is wrong."""
    stock = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        item, sep, count = part.partition("=")
        if not sep or not item.strip() or not (count.strip().isascii() and count.strip().isdigit()):
            raise ValueError(f"expected item=count, got {part!r}")
        if int(count) > MAX_STOCK:
            raise ValueError(f"at most {MAX_STOCK:,} of an item, got {part!r}")
        stock[item.strip()] = int(count)
    if not stock:
        raise ValueError("no items given")
    return stock


def open_store(db: Path, stock: dict[str, int], disk: twopc_disk.Disk) -> DurableStore:
    """Open the database; a new one is filled with `stock`, an existing one keeps its own."""
    store = DurableStore(db, twopc_participant.TRANSACTIONS_SCHEMA + STOCK_SCHEMA, disk)
    with store.transaction() as conn:
        if conn.execute("SELECT count(*) AS n FROM stock").fetchone()["n"] == 0:
            conn.executemany(
                "INSERT INTO stock (item, available) VALUES (?, ?)", sorted(stock.items())
            )
    return store


def create_app(participant: Participant):
    app = twopc_participant.create_app(participant)

    @app.get("/stock")
    def stock():
        rows = participant.store.read("SELECT * FROM stock ORDER BY item")
        return jsonify(items={r.pop("item"): r for r in rows})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The stock service: a 2PC participant.")
    add_server_args(parser, DEFAULT_PORT, DEFAULT_DB)
    parser.add_argument(
        "--stock",
        default=DEFAULT_STOCK,
        help=f"initial stock of a new database, item=count,... (default {DEFAULT_STOCK})",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="where the stock lives: SQLite (--db, the default) or PostgreSQL (--dsn), "
        "whose PREPARE TRANSACTION is the participant's prepare",
    )
    parser.add_argument("--dsn", help="PostgreSQL connection string, for --store postgres")
    twopc_participant.add_participant_args(parser)
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    twopc_participant.check_participant_args(parser, args)
    if (args.store == "postgres") != bool(args.dsn):
        parser.error("--dsn goes with --store postgres, and --store postgres needs --dsn")
    if args.store == "postgres" and args.volatile_cache:
        parser.error("--volatile-cache is for the SQLite store (PostgreSQL keeps its own disk)")
    try:
        stock = parse_stock(args.stock)
    except ValueError as err:
        parser.error(f"--stock: {err}")
    if args.store == "postgres":
        return serve_on_postgres(args, stock)
    return twopc_participant.serve(
        args, Stock(), lambda disk: open_store(args.db, stock, disk), create_app
    )


def serve_on_postgres(args: argparse.Namespace, stock: dict[str, int]) -> int:
    import inventory_postgres  # only here: the SQLite service never needs psycopg

    try:
        store = inventory_postgres.PostgresStore(args.dsn, stock)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    faults = twopc_participant.participant_faults(args)
    participant = inventory_postgres.PostgresParticipant(
        Stock(), store, faults, Messenger(faults.messages), args.in_doubt_after, args.ask_max
    )
    app = create_app(participant)
    inventory_postgres.answer_503_while_down(app)
    twopc_participant.run(participant, app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
