"""The operator's tool: list a participant's in-doubt transactions, and end one by hand.

    python TwoPhaseCommit/in_doubt.py --participant http://127.0.0.1:5002
    python TwoPhaseCommit/in_doubt.py --participant http://127.0.0.1:5002 --commit a1b2.3

A transaction stays in doubt (PREPARED) until its coordinator says how it
ended. When that coordinator can never say (its log is lost), a person must
decide, after finding out what the other participants did: this is a
*heuristic* decision, recorded as such, like XA's heuristic completion or
PostgreSQL's COMMIT PREPARED typed by hand. See the README's "A coordinator
that lost its log". Exit status 0 on success, 1 if the participant refused
or could not be reached.
"""

from __future__ import annotations

import argparse
import sys

import requests

TIMEOUT = 10.0  # s for one request to the participant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participant", required=True, help="the participant's URL")
    decide = parser.add_mutually_exclusive_group()
    decide.add_argument("--commit", metavar="TXID", help="commit this in-doubt transaction")
    decide.add_argument("--abort", metavar="TXID", help="abort this in-doubt transaction")
    args = parser.parse_args(argv)
    if not args.participant.startswith(("http://", "https://")):
        parser.error("--participant must be an http:// URL")
    url = args.participant.rstrip("/")
    try:
        if args.commit or args.abort:
            decision, txid = ("commit", args.commit) if args.commit else ("abort", args.abort)
            reply = requests.post(
                f"{url}/admin/resolve", json={"txid": txid, "decision": decision}, timeout=TIMEOUT
            )
            body = reply.json()
            if reply.status_code != 200:
                print(f"refused: {body.get('error', body)}")
                return 1
            print(f"{txid}: {body['state']} ({body['resolved_by']})")
            return 0
        reply = requests.get(f"{url}/transactions?state=PREPARED", timeout=TIMEOUT)
        transactions = reply.json()["transactions"]
    except (requests.RequestException, ValueError, KeyError) as err:
        print(f"cannot reach the participant at {url}: {type(err).__name__}")
        return 1
    print(f"{len(transactions)} in-doubt transaction(s) at {url}")
    for tx in transactions:
        why = tx["doubt"] or "waiting for phase 2"
        print(f"  {tx['txid']}  coordinator log {tx['coordinator_log']}  {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
