"""Place food orders through the coordinator from the terminal and print each true outcome.

    python TwoPhaseCommit/order_client.py --item pizza --quantity 2
    python TwoPhaseCommit/order_client.py --item pizza --concurrent 12   # 12 at the same moment

Every order gets an id (an Idempotency-Key) before it is sent. If the reply
does not come (a timeout, a lost connection, a coordinator restarting), the
client sends the same order with the same id again, with back-off: the
coordinator answers a retry with the first outcome and never reserves twice,
so retrying is safe. What it prints is what the coordinator decided.
Exit status: 0 when every order got its outcome (committed or aborted), 1
when some order's outcome could not be learned.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

DEFAULT_COORDINATOR = "http://127.0.0.1:5000"
MAX_CONCURRENT = 200
MAX_ATTEMPTS = 100
DEFAULT_TIMEOUT = 30.0  # s per attempt: an order takes two round trips to each service
FIRST_BACKOFF = 0.2  # s before the first retry; doubles up to MAX_BACKOFF
MAX_BACKOFF = 5.0


def place(coordinator: str, order: dict, attempts: int, timeout: float) -> dict:
    """One order, retried with the same id until it has an outcome; else {"error": ...}."""
    order_id = uuid.uuid4().hex[:12]
    backoff = FIRST_BACKOFF
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            reply = requests.post(
                f"{coordinator}/orders",
                json=order,
                headers={"Idempotency-Key": order_id},
                timeout=timeout,
            )
            body = reply.json()
        except (requests.RequestException, ValueError) as err:
            problem = f"no answer from {coordinator} ({type(err).__name__})"
        else:
            if reply.status_code == 200:
                return {**body, "attempts": attempt}
            if reply.status_code != 409:  # 409: still being decided, ask again
                return {"error": f"HTTP {reply.status_code}: {body.get('error', body)}"}
            problem = body.get("error", "still being decided")
        if attempt < attempts:
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
    return {
        "error": f"order {order_id}: outcome unknown after {attempts} attempt(s): {problem}; "
        f"ask GET {coordinator}/orders/{order_id}"
    }


def describe(result: dict) -> str:
    if "error" in result:
        return f"error      {result['error']}"
    outcome = f"{result['outcome']:<10} {result['order_id']}"
    if result["attempts"] > 1:
        outcome += f"  (after {result['attempts']} attempts)"
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
    parser.add_argument(
        "--attempts", type=int, default=5, help="tries per order before giving up (default 5)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for one reply (default {DEFAULT_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.concurrent <= MAX_CONCURRENT:
        parser.error(f"--concurrent must be 1..{MAX_CONCURRENT}, got {args.concurrent}")
    if not 1 <= args.attempts <= MAX_ATTEMPTS:
        parser.error(f"--attempts must be 1..{MAX_ATTEMPTS}, got {args.attempts}")
    if not 0 < args.timeout <= 3600:
        parser.error("--timeout must be > 0 and at most 3600 s")
    if not args.coordinator.startswith(("http://", "https://")):
        parser.error("--coordinator must be an http:// URL")
    order = {"item": args.item, "quantity": args.quantity, "address": args.address}

    print_lock = threading.Lock()  # one line per order, never interleaved

    def place_and_print(number: int) -> dict:
        result = place(args.coordinator.rstrip("/"), order, args.attempts, args.timeout)
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
