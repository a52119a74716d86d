"""SimpleCDN demo: two edges ("regions") in front of a far-away origin, and what each request costs.

    python SimpleCDN/demo.py

Starts the origin with 80 ms of latency and two edges on free ports, then
walks through: hits and misses per region, expiry and revalidation, a
`no-store` page, a PUT that invalidates, a burst of users, a page that sets
a cookie, and the origin dying while a stale copy is still served. Writes its plot to SimpleCDN/out/
(`--save-images` rewrites the README's picture in images/ instead) and ends
with the measured lesson, or with `Lesson not shown:` and exit 1 if it did not show.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"  # the README's pictures: rewritten only with --save-images
OUT = HERE / "out"  # git-ignored: where a run's plot goes by default
PLOT_FORMATS = (".png", ".svg", ".pdf")  # what --plot may write (matplotlib picks by suffix)
ORIGIN_LATENCY_MS = 80
STARTUP_TIMEOUT = 15.0
BURST_REQUESTS = 240  # the "many users" step
BURST_PAGES = ["/index.html", "/assets/app.3f9a1c.js", "/about.html", "/greeting", "/news.html"]


@dataclass
class Fetch:
    region: str
    method: str
    path: str
    status: int
    x_cache: str
    age: str
    ms: float
    body: bytes


def start(script: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Start a server script on a free port; return it and the URL it announced."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("Listening on "):
            return proc, line.split()[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"{script} did not start")


class User:
    """A user who talks to one edge (their nearest region) over a kept-alive connection."""

    def __init__(self, region: str, url: str) -> None:
        self.region, self.url = region, url
        self.session = requests.Session()
        self.log: list[Fetch] = []

    def fetch(self, path: str, method: str = "GET", **kwargs) -> Fetch:
        started = time.perf_counter()
        response = self.session.request(method, self.url + path, timeout=30, **kwargs)
        ms = (time.perf_counter() - started) * 1000
        row = Fetch(
            self.region,
            method,
            path,
            response.status_code,
            response.headers.get("X-Cache", "-"),
            response.headers.get("Age", "-"),
            ms,
            response.content,
        )
        self.log.append(row)
        return row


def heading(text: str) -> None:
    print(f"\n== {text}")


def table(rows: list[Fetch], note: str = "") -> None:
    print(f"   {'region':<8} {'request':<28} {'status':>6}  {'X-Cache':<11} {'Age':>4} {'ms':>7}")
    for r in rows:
        request = f"{r.method} {r.path}"
        print(
            f"   {r.region:<8} {request:<28} {r.status:>6}  {r.x_cache:<11} {r.age:>4} {r.ms:>7.1f}"
        )
    if note:
        print(f"   {note}")


def origin_requests(origin_url: str) -> int:
    return requests.get(origin_url + "/__origin/stats", timeout=5).json()["requests"]


def plot(users: list[User], client_total: int, origin_total: int, path: Path) -> Path:
    rows = [r for u in users for r in u.log if r.method == "GET" and r.status == 200]
    groups = {label: [r.ms for r in rows if r.x_cache == label] for label in ("HIT", "MISS")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    for position, (label, values) in enumerate(groups.items()):
        jitter = [position + 0.08 * ((i % 9) - 4) / 4 for i in range(len(values))]
        left.scatter(values, jitter, s=12, alpha=0.6, label=f"{label} (n={len(values)})")
    left.set_xscale("log")
    left.set_yticks([0, 1], ["HIT", "MISS"])
    left.set_ylim(-0.6, 1.6)
    left.set_xlabel("latency per request, ms (log scale)")
    left.set_title(f"Served by the edge vs fetched from an origin {ORIGIN_LATENCY_MS} ms away")
    left.grid(axis="x", alpha=0.3)
    right.bar(
        ["client requests", "origin requests"],
        [client_total, origin_total],
        color=["tab:blue", "tab:orange"],
    )
    right.set_title(f"Origin offload: {1 - origin_total / client_total:.0%}")
    for x, value in enumerate([client_total, origin_total]):
        right.text(x, value, str(value), ha="center", va="bottom")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Two edges in front of an origin 80 ms away: hits, misses, revalidation, "
        "no-store, invalidation and a dead origin, measured. Takes about 10 s."
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="where to write the latency plot (default: SimpleCDN/out/hit_vs_miss.png)",
    )
    parser.add_argument(
        "--save-images",
        action="store_true",
        help="rewrite the README's picture, SimpleCDN/images/hit_vs_miss.png",
    )
    args = parser.parse_args()
    if args.plot is None:
        args.plot = (IMAGES if args.save_images else OUT) / "hit_vs_miss.png"
    if args.plot.suffix.lower() not in PLOT_FORMATS:
        parser.error(f"--plot must end in one of {', '.join(PLOT_FORMATS)}, got {args.plot}")
    origin, origin_url = start("origin_server.py", "--latency-ms", str(ORIGIN_LATENCY_MS))
    edges = [
        start("cdn_server.py", "--origin", origin_url, "--name", name)
        for name in ("eu-west", "us-east")
    ]
    failures: list[str] = []
    try:
        eu, us = User("eu-west", edges[0][1]), User("us-east", edges[1][1])
        print(
            f"origin {origin_url} (+{ORIGIN_LATENCY_MS} ms), edges: eu-west {eu.url}, "
            f"us-east {us.url}"
        )

        heading("1. A user in Europe fetches three pages, twice each, through the nearest edge")
        rows = [
            eu.fetch(p)
            for p in ("/index.html", "/assets/app.3f9a1c.js", "/about.html")
            for _ in range(2)
        ]
        rows.append(eu.fetch("/news.html"))
        table(rows, "first request: MISS (the edge asks the origin); second: HIT (from the edge)")

        heading("2. A user in America: the other region has its own cache, so it misses once too")
        table([us.fetch("/index.html"), us.fetch("/index.html")])

        heading("3. Three seconds later /index.html (max-age=3) has expired: revalidation")
        time.sleep(3.2)
        rows = [eu.fetch("/index.html"), eu.fetch("/index.html")]
        table(
            rows,
            "REVALIDATED: the edge asked If-None-Match, the origin said 304, "
            "no body crossed the ocean",
        )
        if rows[0].x_cache != "REVALIDATED":
            failures.append("expired page was not revalidated")

        heading("4. /api/time says Cache-Control: no-store, so it is never cached")
        rows = [eu.fetch("/api/time") for _ in range(3)]
        table(rows, "every request pays the full trip to the origin")
        if any(r.x_cache != "MISS" for r in rows) or len({r.body for r in rows}) != 3:
            failures.append("a no-store response was served from the cache")

        heading("5. A PUT through the edge invalidates the stored copy")
        rows = [
            eu.fetch("/items/logo"),
            eu.fetch("/items/logo"),
            eu.fetch("/items/logo", "PUT", data=b"logo, version 2\n"),
            eu.fetch("/items/logo"),
        ]
        table(rows, f"after the PUT the edge fetched the new version: {rows[-1].body!r}")
        if rows[-1].x_cache != "MISS" or rows[-1].body != b"logo, version 2\n":
            failures.append("the PUT did not invalidate the stored copy")

        heading(f"6. A burst: {BURST_REQUESTS} requests from both regions, most for a few pages")
        before = origin_requests(origin_url)
        burst_started = time.perf_counter()
        popularity = [1 / rank for rank in range(1, len(BURST_PAGES) + 1)]  # Zipf-like
        pages = random.Random(7).choices(BURST_PAGES, weights=popularity, k=BURST_REQUESTS)
        for i, page in enumerate(pages):
            (us if i % 3 == 0 else eu).fetch(page)
        burst_origin = origin_requests(origin_url) - before
        print(
            f"   {BURST_REQUESTS} client requests in {time.perf_counter() - burst_started:.1f} s "
            f"reached the origin {burst_origin} times"
        )

        heading("7. A page that sets a cookie is personal: it is never shared")
        page = "/respond?page=welcome&cc=max-age%3D600&cookie=1"  # Set-Cookie for whoever asks
        cookies = []
        for name in ("alice", "bob"):
            row = eu.fetch(page, headers={"X-User": name})
            cookies.append(eu.session.cookies.get("session"))
            eu.session.cookies.clear()
            print(
                f"   eu-west  {name:<5} GET /respond?...&cookie=1  {row.status:>6}  "
                f"{row.x_cache:<11} Set-Cookie: session={cookies[-1]}"
            )
        if cookies != ["alice-secret", "bob-secret"]:
            failures.append(f"a cookie was handed to another user: {cookies}")

        heading("8. The origin crashes: who still gets an answer?")
        time.sleep(3.1)  # long enough for index.html and news.html to be stale again
        origin.kill()
        origin.wait()
        rows = [
            eu.fetch("/news.html"),
            eu.fetch("/assets/app.3f9a1c.js"),
            eu.fetch("/index.html"),
            eu.fetch("/account"),
        ]
        table(
            rows,
            "news.html is stale but says stale-if-error=600: served STALE; the asset is "
            "still fresh: HIT;",
        )
        print(
            "   index.html is stale with no permission to serve it stale: 504; "
            "never-cached /account: 502"
        )
        if rows[0].x_cache != "STALE" or rows[0].status != 200:
            failures.append("the stale-if-error copy was not served with the origin down")
        if rows[2].status != 504 or rows[3].status != 502:
            failures.append("the edge did not answer 504/502 when it had to")

        users = [eu, us]
        gets = [r for u in users for r in u.log if r.method == "GET" and r.status == 200]
        hits = [r.ms for r in gets if r.x_cache == "HIT"]
        misses = [r.ms for r in gets if r.x_cache == "MISS"]
        hit_ms, miss_ms = statistics.median(hits), statistics.median(misses)
        stats = [requests.get(u.url + "/__cdn/stats", timeout=5).json() for u in users]
        client_total = sum(len(u.log) for u in users)
        origin_total = sum(s["origin_requests"] for s in stats)
        path = plot(users, client_total, origin_total, args.plot)

        heading("Summary")
        print(f"   {'':<26} {'eu-west':>9} {'us-east':>9}")
        for key in ("hits", "misses", "revalidations", "stale", "origin_requests", "hit_ratio"):
            print(f"   {key:<26} {stats[0][key]:>9} {stats[1][key]:>9}")
        print(
            f"   median latency: HIT {hit_ms:.1f} ms (n={len(hits)}), "
            f"MISS {miss_ms:.1f} ms (n={len(misses)})"
        )
        shown = path.resolve()
        if shown.is_relative_to(Path.cwd()):
            shown = shown.relative_to(Path.cwd())
        print(f"   plot: {shown}")

        ratio = miss_ms / hit_ms
        offload = 1 - origin_total / client_total
        if ratio < 10:
            failures.append(f"a hit was only {ratio:.1f}x faster than a miss")
        figures = (
            f"a hit answered in {hit_ms:.1f} ms vs {miss_ms:.0f} ms from the origin "
            f"({ratio:.0f}x faster), and the edges sent the origin {origin_total} of "
            f"{client_total} requests ({offload:.0%} offload)"
        )
        if failures:
            print(f"Lesson not shown: {'; '.join(failures)} ({figures})")
            return 1
        print(f"Lesson: {figures}, all within what HTTP allowed")
        return 0
    finally:
        for proc, _ in edges:
            proc.terminate()
        origin.kill()
        for proc in [origin] + [p for p, _ in edges]:
            proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
