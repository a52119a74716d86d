"""Fetch one URL through an edge several times and show what each answer was.

    python SimpleCDN/cdn_client.py http://127.0.0.1:8080/index.html -n 5 --interval 1

For every request: the status, `X-Cache` (HIT, MISS, REVALIDATED, STALE),
`Age`, the latency and the size, so you can watch a page become a hit, age,
go stale and be revalidated. Extra request headers go in with -H, as in curl.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from urllib.parse import urlsplit

MAX_SECONDS = 24 * 3600  # the longest --interval or --timeout accepted


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"a header looks like 'Name: value', not {text!r}")
    return name.strip(), value.strip()


def fetch(conn: http.client.HTTPConnection, method: str, target: str, headers: dict) -> tuple:
    """One request; returns (status, x_cache, age, milliseconds, body bytes)."""
    started = time.perf_counter()
    conn.request(method, target, headers=headers)
    response = conn.getresponse()
    body = response.read()
    elapsed_ms = (time.perf_counter() - started) * 1000
    return (
        response.status,
        response.getheader("X-Cache", "-"),
        response.getheader("Age", "-"),
        elapsed_ms,
        len(body),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch a URL through an edge N times.")
    parser.add_argument("url", help="e.g. http://127.0.0.1:8080/index.html")
    parser.add_argument("-n", "--count", type=int, default=5, help="requests to send (default 5)")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between requests")
    parser.add_argument("-X", "--method", default="GET", help="request method (default GET)")
    parser.add_argument(
        "-H",
        "--header",
        type=parse_header,
        action="append",
        default=[],
        help="extra request header, e.g. -H 'Cache-Control: no-cache'",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        url = urlsplit(args.url)
        port = url.port or 80
    except ValueError:  # e.g. an unclosed IPv6 bracket or a port past 65535
        parser.error(f"not a valid URL: {args.url!r}")
    if url.scheme != "http" or not url.hostname:
        parser.error(f"need an http:// URL, got {args.url!r}")
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not 0 <= args.interval <= MAX_SECONDS:  # (also refuses nan)
        parser.error(f"--interval must be 0..{MAX_SECONDS} seconds")
    if not 0 < args.timeout <= MAX_SECONDS:
        parser.error(f"--timeout must be above 0 and at most {MAX_SECONDS} seconds")
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = dict(args.header)

    conn = http.client.HTTPConnection(url.hostname, port, timeout=args.timeout)
    print(f"{'#':>3}  {'status':>6}  {'X-Cache':<11}  {'Age':>5}  {'ms':>8}  {'bytes':>8}")
    try:
        for number in range(1, args.count + 1):
            status, x_cache, age, ms, size = fetch(conn, args.method, target, headers)
            print(f"{number:>3}  {status:>6}  {x_cache:<11}  {age:>5}  {ms:>8.1f}  {size:>8}")
            if number < args.count and args.interval:
                time.sleep(args.interval)
    except (OSError, http.client.HTTPException) as exc:
        print(f"request failed: {exc} (is the edge running at {args.url}?)", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
