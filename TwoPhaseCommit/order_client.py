"""Place food orders through the coordinator from the terminal and print each outcome.

    python TwoPhaseCommit/order_client.py --item pizza --quantity 2
    python TwoPhaseCommit/order_client.py --item pizza --concurrent 12   # 12 at the same moment

Exit status: 0 when every order got an answer (committed or aborted), 1 when
the coordinator could not be reached or answered with an error.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

DEFAULT_COORDINATOR = "http://127.0.0.1:5000"
MAX_CONCURRENT = 200
TIMEOUT = 30.0  # s: an order takes two round trips to each service, plus fsyncs


def place(coordinator: str, order: dict) -> dict:
    """One order; an unreachable coordinator or an error reply becomes {"error": ...}."""
    try:
        reply = requests.post(f"{coordinator}/orders", json=order, timeout=TIMEOUT)
    except requests.RequestException as err:
        return {"error": f"cannot reach the coordinator at {coordinator}: {type(err).__name__}"}
    try:
        body = reply.json()
    except ValueError:
        return {"error": f"HTTP {reply.status_code} without a JSON body"}
    if reply.status_code != 200:
        return {"error": f"HTTP {reply.status_code}: {body.get('error', body)}"}
    return body


def describe(result: dict) -> str:
    if "error" in result:
        return f"error      {result['error']}"
    outcome = f"{result['outcome']:<10} {result['txid']}"
    if not result.get("complete", True):
        outcome += "  (a participant has not acknowledged yet; the coordinator keeps telling it)"
    if result.get("reason"):
        outcome += f"  {result['reason']}"
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default=DEFAULT_COORDINATOR, help="coordinator URL")
    parser.add_argument("--item", default="pizza", help="what to order (default pizza)")
    parser.add_argument("--quantity", type=int, default=1, help="how many (default 1)")
    parser.add_argument("--address", default="1 Example Street", help="where to deliver")
    parser.add_argument(
        "--concurrent", type=int, default=1, help="place this many identical orders at once"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.concurrent <= MAX_CONCURRENT:
        parser.error(f"--concurrent must be 1..{MAX_CONCURRENT}, got {args.concurrent}")
    if not args.coordinator.startswith(("http://", "https://")):
        parser.error("--coordinator must be an http:// URL")
    order = {"item": args.item, "quantity": args.quantity, "address": args.address}

    print_lock = threading.Lock()  # one line per order, never interleaved

    def place_and_print(number: int) -> dict:
        result = place(args.coordinator.rstrip("/"), order)
        with print_lock:
            print(f"order {number:>3}: {describe(result)}", flush=True)
        return result

    with ThreadPoolExecutor(args.concurrent) as pool:
        results = list(pool.map(place_and_print, range(1, args.concurrent + 1)))
    committed = sum(r.get("outcome") == "committed" for r in results)
    errors = sum("error" in r for r in results)
    print(f"{committed} committed, {len(results) - committed - errors} aborted, {errors} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
