"""Two-phase commit, the guided run: eight food orders, crashes, a power cut and a lost log.

    python TwoPhaseCommit/demo.py

Starts InventoryService, DeliveryService and the Coordinator as three processes
on free ports with fresh databases, then walks through: an order that commits;
no free rider; out of stock; the coordinator crashing after its decision; a
participant crashing after voting yes; the blocking problem, where the
coordinator dies before deciding and both services must hold the food and the
rider until it comes back; a power cut that loses a participant's unforced
commit, which it then learns again; and a coordinator that comes back with an
empty log, which must not presume abort: an operator ends the doubt by hand.
After each step it prints both services' state.
The databases stay in out/demo/ (git-ignored) for you to open afterwards.
Ends with a `Lesson:` line, or with `Lesson not shown:` and exit status 1 if
any step did not go as 2PC promises (an order half done, a reservation stuck).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from twopc_cluster import OUT_DIR, Cluster, Service, ServiceDown, fresh_workdir
from twopc_node import order_and_attempt

STOCK = "pizza=6,sushi=2"
# Fast doubt resolution so the run is short; the coordinator's phase-2 retry
# is slower, so in step 5 the participant asks before it is told.
PARTICIPANT_ARGS = ("--in-doubt-after", "0.3", "--ask-max", "0.5")
COORDINATOR_ARGS = ("--retry-interval", "2", "--retry-max", "2")
BLOCKED_SECONDS = 1.5  # how long step 6 leaves the coordinator down
# The lines a restarted service prints about what it found on disk and at the participants.
RECOVERY_LINES = ("recovered", "coordinator log", "asked the participants")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


class Walkthrough:
    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.orders: dict[str, str] = {}  # txid -> "2 pizza"
        self.failures: list[str] = []

    # -- what the learner sees after each step -------------------------------------------

    def coordinator_says(self, txid: str) -> str:
        if self.cluster.coordinator is not None and self.cluster.coordinator.running:
            order_id, _ = order_and_attempt(txid)
            reply = self.cluster.coordinator.get(f"/orders/{order_id}")
            return reply.get("outcome", "no record")
        # It is down: read its log file straight off the disk.
        with sqlite3.connect(self.workdir / "coordinator.db") as db:
            row = db.execute("SELECT state FROM log WHERE txid = ?", (txid,)).fetchone()
        return f"(down) log: {row[0] if row else 'nothing'}"

    def participant_says(self, name: str, txid: str) -> str:
        service = self.cluster.services[name]
        if not service.running:
            return "(down)"
        tx = self.cluster.transactions(name).get(txid)
        if tx is None:
            return "no record"
        text = tx["state"]
        if tx["state"] == "PREPARED":
            text += " (in doubt, holding it)"
        elif tx["reason"]:
            text += f": {tx['reason']}"
        elif tx["resolved_by"]:
            text += f" ({tx['resolved_by']})"
        return text

    def show(self, *txids: str) -> None:
        rows = [
            [
                txid,
                self.orders[txid],
                self.coordinator_says(txid),
                self.participant_says("inventory", txid),
                self.participant_says("delivery", txid),
            ]
            for txid in txids
        ]
        print_table(["order", "what", "coordinator", "inventory", "delivery"], rows)
        self.show_resources()

    def show_resources(self) -> None:
        parts = []
        if self.cluster.inventory.running:
            items = self.cluster.inventory.get("/stock")["items"]
            parts.append(
                "stock "
                + ", ".join(
                    f"{item} {s['available']} free/{s['reserved']} held/{s['sold']} sold"
                    for item, s in items.items()
                )
            )
        if self.cluster.delivery.running:
            c = self.cluster.delivery.get("/riders")["counts"]
            parts.append(f"riders {c['free']} free/{c['reserved']} held/{c['assigned']} assigned")
        else:
            parts.append("riders: delivery is down")
        print("  " + ";  ".join(parts))

    # -- checks ----------------------------------------------------------------------------

    def expect(self, what: str, actual: object, expected: object) -> None:
        if actual != expected:
            self.failures.append(f"{what}: expected {expected}, got {actual}")

    def check_atomic(self) -> int:
        """Record any half-done order as a failure; return how many there are."""
        half = self.cluster.half_done()
        if half:
            self.failures.append(f"half-done orders: {half}")
        return len(half)

    def order(self, item: str, quantity: int) -> dict:
        result = self.cluster.order(item, quantity)
        if "txid" in result:
            self.orders[result["txid"]] = f"{quantity} {item}"
        return result

    def only_new_txid(self, item: str, quantity: int) -> str:
        """The txid of an order whose coordinator died before answering: ask a participant."""
        (txid,) = set(self.cluster.transactions("inventory")) - set(self.orders)
        self.orders[txid] = f"{quantity} {item}"
        return txid

    def set_fault(self, name: str, **faults: object) -> None:
        self.cluster.services[name].post("/admin/faults", faults)

    # -- the six steps -----------------------------------------------------------------------

    def step_commit(self) -> None:
        print("\n1. A normal order: both vote yes, the coordinator logs COMMIT, both commit")
        result = self.order("pizza", 2)
        self.expect("step 1 outcome", result.get("outcome"), "committed")
        self.show(result["txid"])

    def step_no_rider(self) -> None:
        print("\n2. No free rider: delivery votes no, inventory gives the food back")
        result = self.order("pizza", 1)
        self.expect("step 2 outcome", result.get("outcome"), "aborted")
        self.show(result["txid"])
        self.expect(
            "step 2 pizza held",
            self.cluster.inventory.get("/stock")["items"]["pizza"]["reserved"],
            0,
        )

    def step_out_of_stock(self) -> None:
        print("\n3. Three riders start their shift; an order for 5 sushi finds only 2")
        self.cluster.delivery.post("/riders", {"count": 3})
        result = self.order("sushi", 5)
        self.expect("step 3 outcome", result.get("outcome"), "aborted")
        self.show(result["txid"])
        self.expect(
            "step 3 riders held", self.cluster.delivery.get("/riders")["counts"]["reserved"], 0
        )

    def step_coordinator_crash_after_decision(self) -> None:
        print("\n4. The coordinator crashes right after logging COMMIT, before telling anyone")
        self.set_fault("coordinator", crash_at="after-decision")
        result = self.order("pizza", 1)
        self.expect("step 4 client sees", "error" in result, True)
        self.cluster.coordinator.wait_exit()
        txid = self.only_new_txid("pizza", 1)
        self.show(txid)
        # The decision is on disk and nobody has heard it: both still hold the order.
        self.expect(
            "step 4 coordinator's log", self.coordinator_says(txid), "(down) log: COMMITTED"
        )
        for name in ("inventory", "delivery"):
            self.expect(f"step 4 {name} while down", self.participant_state(name, txid), "PREPARED")
        print("  restarting the coordinator ...")
        self.cluster.coordinator.start()
        print("  " + self.recovery_lines(self.cluster.coordinator))
        self.settle()
        self.show(txid)
        self.expect("step 4 inventory", self.participant_state("inventory", txid), "COMMITTED")
        self.expect("step 4 delivery", self.participant_state("delivery", txid), "COMMITTED")

    def step_participant_crash_after_yes(self) -> None:
        print("\n5. DeliveryService crashes right after voting yes")
        self.set_fault("delivery", crash_at="after-vote")
        result = self.order("pizza", 1)
        self.expect("step 5 outcome", result.get("outcome"), "committed")
        self.cluster.delivery.wait_exit()
        txid = result["txid"]
        print(f"  the client was told: {result['outcome']}, complete={result['complete']}")
        self.show(txid)
        print("  restarting delivery ...")
        self.cluster.delivery.start()
        print("  delivery: " + self.recovery_lines(self.cluster.delivery))
        self.settle()
        self.show(txid)
        self.expect("step 5 delivery", self.participant_state("delivery", txid), "COMMITTED")

    def step_blocking(self) -> float:
        print("\n6. The blocking problem: both voted yes, the coordinator crashes before deciding")
        self.set_fault("coordinator", crash_at="before-decision")
        result = self.order("pizza", 2)
        self.expect("step 6 client sees", "error" in result, True)
        self.cluster.coordinator.wait_exit()
        blocked_at = time.monotonic()
        txid = self.only_new_txid("pizza", 2)
        asks_before = self.asks()
        time.sleep(BLOCKED_SECONDS)
        print(
            f"  {BLOCKED_SECONDS:g} s later: the services asked the coordinator "
            f"{self.asks() - asks_before} times, no answer; they may not decide alone"
        )
        self.show(txid)
        self.expect(
            "step 6 inventory while down", self.participant_state("inventory", txid), "PREPARED"
        )
        self.expect(
            "step 6 delivery while down", self.participant_state("delivery", txid), "PREPARED"
        )
        print("  restarting the coordinator ...")
        self.cluster.coordinator.start()
        print("  " + self.recovery_lines(self.cluster.coordinator))
        self.settle()
        blocked = time.monotonic() - blocked_at
        self.show(txid)
        self.expect("step 6 inventory", self.participant_state("inventory", txid), "ABORTED")
        self.expect("step 6 delivery", self.participant_state("delivery", txid), "ABORTED")
        return blocked

    def step_power_cut(self) -> None:
        print("\n7. A power cut at DeliveryService just after it committed an order")
        print("  delivery now keeps unsynced writes in its own memory (--volatile-cache):")
        print("  a kill loses them, as a power cut would; its COMMITTED row is not forced")
        self.cluster.delivery.stop()
        self.cluster.delivery.args.append("--volatile-cache")
        self.cluster.delivery.start()
        self.cluster.delivery.post("/riders", {"count": 2})  # forced: on disk before the order
        result = self.order("pizza", 1)
        self.expect("step 7 outcome", result.get("outcome"), "committed")
        txid = result["txid"]
        self.show(txid)
        print("  the power goes out at delivery ...")
        self.cluster.delivery.kill()
        self.cluster.delivery.start()
        recovered = self.recovery_lines(self.cluster.delivery)
        print("  delivery: " + recovered)
        self.expect("step 7 lost the unforced commit", txid in recovered, True)
        self.settle()
        self.show(txid)
        self.expect("step 7 delivery", self.participant_state("delivery", txid), "COMMITTED")

    def step_lost_log(self) -> None:
        print("\n8. The coordinator crashes mid phase 2 and comes back with an empty log")
        self.set_fault("coordinator", crash_at="after-first-commit")
        result = self.order("pizza", 1)
        self.expect("step 8 client sees", "error" in result, True)
        self.cluster.coordinator.wait_exit()
        txid = self.only_new_txid("pizza", 1)
        coordinator = self.cluster.coordinator
        db = coordinator.args.index("--db") + 1
        coordinator.args[db] = str(self.workdir / "coordinator-new-disk.db")
        print("  restarting the coordinator on a new, empty disk ...")
        coordinator.start()
        print("  " + self.recovery_lines(coordinator))
        deadline = time.monotonic() + 10
        while "cannot know" not in self.doubt("delivery", txid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.show(txid)
        print(f"  delivery's doubt: {self.doubt('delivery', txid)}")
        in_doubt = self.participant_state("delivery", txid)
        self.expect("step 8 delivery in doubt", in_doubt, "PREPARED")
        print("  an operator sees inventory COMMITTED and commits delivery by hand:")
        resolved = self.cluster.delivery.post(
            "/admin/resolve", {"txid": txid, "decision": "commit"}
        )
        print(f"  in_doubt.py --commit {txid}  ->  {resolved.get('resolved_by')}")
        self.show(txid)
        self.expect("step 8 delivery", self.participant_state("delivery", txid), "COMMITTED")

    def doubt(self, name: str, txid: str) -> str:
        return self.cluster.transactions(name).get(txid, {}).get("doubt", "")

    # -- helpers -----------------------------------------------------------------------------

    def participant_state(self, name: str, txid: str) -> str | None:
        return self.cluster.transactions(name).get(txid, {}).get("state")

    def asks(self) -> int:
        return sum(
            self.cluster.services[p].get("/stats")["messages"] // 2  # an ask and its answer
            for p in ("inventory", "delivery")
        )

    def settle(self) -> None:
        if not self.cluster.wait_until_settled():
            self.failures.append("a transaction stayed PREPARED after every process was back")

    @staticmethod
    def recovery_lines(service: Service) -> str:
        """What a restarted service said about what it found (the coordinator: once it asked)."""
        if service.script == "Coordinator.py":
            service.wait_for_line("asked the participants")
        found = [line for line in service.lines if line.startswith(RECOVERY_LINES)]
        return "\n  ".join(found) or "nothing to recover"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR / "demo",
        help="folder for the three databases (default TwoPhaseCommit/out/demo)",
    )
    parser.add_argument(
        "--save-images", action="store_true", help="accepted for `make images`; draws no pictures"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        workdir = fresh_workdir(args.out)
    except OSError as err:
        parser.error(f"--out: cannot use {args.out}: {err.strerror}")
    cluster = Cluster(
        workdir,
        STOCK,
        riders=1,
        participant_args=PARTICIPANT_ARGS,
        coordinator_args=COORDINATOR_ARGS,
    )
    print(f"Starting InventoryService ({STOCK}), DeliveryService (1 rider), Coordinator ...")
    try:
        with cluster:
            demo = Walkthrough(cluster, workdir)
            demo.step_commit()
            demo.step_no_rider()
            demo.step_out_of_stock()
            demo.step_coordinator_crash_after_decision()
            demo.step_participant_crash_after_yes()
            blocked = demo.step_blocking()
            demo.step_power_cut()
            demo.step_lost_log()
            half_done = demo.check_atomic()
    except ServiceDown as err:
        print(f"\nLesson not shown: a service stopped answering: {err}")
        return 1
    print(f"\n({time.monotonic() - started:.1f} s; databases in {workdir})")
    seen = (
        f"{len(demo.orders)} orders through 4 crashes, a power cut and a lost log ended with "
        f"{half_done} half done; "
        f"an undecided order held 2 pizzas and a rider for {blocked:.1f} s"
    )
    if demo.failures:
        print(f"\nLesson not shown: {'; '.join(demo.failures)}. Seen: {seen}")
        return 1
    print(f"\nLesson: {seen} until its coordinator came back (the blocking problem)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
