"""Worker ids leased from etcd, so no two live generators can share one.

A worker claims the lowest free id as an etcd key bound to a lease (a TTL that
it must keep renewing); if it dies, the lease expires and the key, so the id,
is freed. A worker that is paused past its TTL may wake up after someone else
took its id, so it keeps a local deadline on a monotonic clock and must not
mint once that has passed (README, "Worker ids for real: leases and fencing").

    python UniqueIdGeneration/WorkerIdLease.py --etcd http://127.0.0.1:2379
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, NamedTuple

import requests
from id_arguments import bounded

PREFIX = "/uniqueid/workers/"  # one key per leased worker id: /uniqueid/workers/07
WORKER_IDS = range(32)  # IdGenerator's 5 worker-id bits
DEFAULT_TTL = 10  # seconds etcd keeps an id after the holder's last renewal
RENEWALS_PER_TTL = 3  # renew three times per TTL: two lost renewals are survivable
ETCD_MIN_TTL = 2  # etcd 3.4 (default timings) grants no lease shorter than this


def lease_clock_ns() -> int:
    """The clock every deadline is kept on: it never steps, and it keeps counting
    while the machine is suspended (CLOCK_BOOTTIME; CLOCK_MONOTONIC, which
    stops during a suspend, would make a sleeping laptop think its lease lasted)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


if not hasattr(time, "CLOCK_BOOTTIME"):  # not Linux: the plain monotonic clock
    lease_clock_ns = time.monotonic_ns  # noqa: F811


class EtcdUnavailableError(RuntimeError):
    """etcd did not answer (down, paused, unreachable) or answered with an error."""


class NoFreeWorkerIdError(RuntimeError):
    """Every worker id in the space is held by a live lease."""


class WorkerIdUnavailableError(RuntimeError):
    """The lease was lost and no worker id could be re-acquired in time."""


class LeaseReleasedError(RuntimeError):
    """The lease was released; a generator built on it mints no more ids."""


class Holding(NamedTuple):
    """One uninterrupted hold of one worker id under one etcd lease."""

    worker_id: int
    lease_id: int
    deadline_ns: int  # on lease_clock_ns: renewal sent + TTL - safety margin
    acquired_wall_ns: int  # time.time_ns() once etcd confirmed it (for logs and tests)


# -- etcd's v3 JSON gateway: keys and values travel base64-encoded ------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


class EtcdGateway:
    """The five etcd calls a lease needs, over HTTP+JSON (etcd's grpc-gateway)."""

    def __init__(self, url: str, timeout: float = 2.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()

    def call(self, path: str, body: dict) -> dict:
        try:
            response = self.http.post(f"{self.url}/v3/{path}", json=body, timeout=self.timeout)
            answer = response.json()
        except (requests.RequestException, ValueError) as err:
            raise EtcdUnavailableError(f"etcd at {self.url} did not answer: {err}") from None
        if not isinstance(answer, dict):
            raise self.not_etcd(path, answer)
        # etcd 3.4 says {"error": "etcdserver: requested lease not found", ...}; later
        # gateways {"code": 5, "message": ...} with an HTTP error status.
        if "error" in answer or response.status_code != 200:
            message = answer.get("error") or answer.get("message") or response.reason
            raise EtcdUnavailableError(f"etcd at {self.url}: {message}")
        return answer

    def not_etcd(self, path: str, answer: object) -> EtcdUnavailableError:
        return EtcdUnavailableError(
            f"{self.url} is not etcd's v3 JSON gateway: it answered /v3/{path} "
            f"with {str(answer)[:60]!r}"
        )

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its id, the TTL etcd granted, which may be longer)."""
        answer = self.call("lease/grant", {"TTL": ttl})
        try:
            return int(answer["ID"]), int(answer["TTL"])
        except (KeyError, TypeError, ValueError):
            raise self.not_etcd("lease/grant", answer) from None

    def keepalive(self, lease_id: int) -> int:
        """Renew the lease; the TTL it now has, or 0 when it no longer exists."""
        # The gateway streams keep-alives; one request in, one result out.
        answer = self.call("lease/keepalive", {"ID": lease_id})
        try:
            return int(answer.get("result", {}).get("TTL", 0))
        except (AttributeError, TypeError, ValueError):
            raise self.not_etcd("lease/keepalive", answer) from None

    def revoke(self, lease_id: int) -> None:
        """End the lease now; etcd deletes every key bound to it."""
        try:
            self.call("lease/revoke", {"ID": lease_id})
        except EtcdUnavailableError as err:
            if "lease not found" not in str(err):
                raise

    def create(self, key: str, value: str, lease_id: int) -> bool:
        """Put key=value bound to the lease only if the key does not exist (a transaction
        comparing its create_revision with 0); True if this call created it."""
        answer = self.call(
            "kv/txn",
            {
                "compare": [
                    {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                ],
                "success": [
                    {"request_put": {"key": b64(key), "value": b64(value), "lease": lease_id}}
                ],
            },
        )
        return bool(answer.get("succeeded", False))  # false is left out of etcd's JSON

    def prefix(self, prefix: str) -> dict[str, tuple[str, int]]:
        """Every key under prefix: {key: (value, lease id)}."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the first key after the prefix
        return self.range({"key": b64(prefix), "range_end": b64(end)})

    def get(self, key: str) -> tuple[str, int] | None:
        """One key's (value, lease id), or None."""
        return self.range({"key": b64(key)}).get(key)

    def range(self, body: dict) -> dict[str, tuple[str, int]]:
        answer = self.call("kv/range", body)
        try:
            return {
                unb64(kv["key"]): (unb64(kv.get("value", "")), int(kv.get("lease", 0)))
                for kv in answer.get("kvs", [])
            }
        except (AttributeError, KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
            raise self.not_etcd("kv/range", answer) from None


# -- the lease ------------------------------------------------------------------------


class WorkerIdLease:
    """Holds one worker id at a time, leased from etcd, renewed in the background.

    Guarantee: while `valid_worker_id()` returns an id, no other WorkerIdLease
    on the same etcd and prefix holds it; and ids minted under it cannot
    collide with those of the id's next holder, whether the id passed on by
    expiry or by release(). Assumptions: etcd's lease timing and this
    machine's lease clock run at the same rate to within `safety_margin` per
    TTL; the two holders' generator clocks differ by less than `safety_margin`
    (IdGenerator's timestamps are the fence; see the README); etcd keeps what
    it acknowledged (a restart with its data is fine, an emptied data
    directory is not); and nobody revokes the lease or deletes its key by
    hand (the keeper notices only at its next renewal, up to TTL/3 later).
    """

    def __init__(
        self,
        etcd_url: str,
        *,
        ttl: int = DEFAULT_TTL,
        safety_margin: float | None = None,  # seconds; default a fifth of the TTL
        worker_ids: Sequence[int] = WORKER_IDS,
        prefix: str = PREFIX,
        # How long a generator waits for a lost lease to be re-acquired.
        reacquire_timeout: float = 30.0,
        clock: Callable[[], int] = lease_clock_ns,
    ):
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not ETCD_MIN_TTL <= ttl <= 3600:
            raise ValueError(f"ttl must be whole seconds in {ETCD_MIN_TTL}..3600, got {ttl!r}")
        margin = ttl / 5 if safety_margin is None else safety_margin
        renew_every = ttl / RENEWALS_PER_TTL
        if not 0 < margin < ttl - renew_every:
            raise ValueError(
                f"safety_margin must be above 0 and below {ttl - renew_every:g} s "
                f"(the TTL less one renewal interval), got {margin!r}"
            )
        worker_ids = list(worker_ids)
        if not worker_ids or any(
            isinstance(w, bool) or not isinstance(w, int) or w not in WORKER_IDS for w in worker_ids
        ):
            raise ValueError(f"worker_ids must be a non-empty subset of 0..{max(WORKER_IDS)}")
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/', got {prefix!r}")
        self.etcd = EtcdGateway(etcd_url, timeout=max(0.5, renew_every))
        self.ttl = ttl
        self.margin_ns = int(margin * 1e9)
        self.renew_every = renew_every
        self.worker_ids = sorted(set(worker_ids))
        self.prefix = prefix
        self.reacquire_timeout = reacquire_timeout
        self.clock = clock
        self.owner = f"{socket.gethostname()} pid {os.getpid()}"

        # The keeper thread publishes `holding` (a whole tuple, swapped in one
        # assignment, so a reader never sees half an update) and notifies
        # `changed`; generators read it and wait on `changed`.
        self.holding: Holding | None = None
        self.history: list[Holding] = []  # every hold, oldest first
        self.changed = threading.Condition()
        self.released = False
        # Set by the first valid_worker_id() call: a generator may have minted
        # under this lease, so release() must keep the id for a margin more.
        self.asked = False
        self.stopping = threading.Event()
        self.keeper: threading.Thread | None = None

    # -- what a generator asks ------------------------------------------------------

    def valid_worker_id(self) -> int | None:
        """The worker id, if the deadline has not passed *now*; else None.

        Call it after reading the clock an id's timestamp comes from: then that
        instant is known to lie inside the hold.
        """
        self.asked = True  # before reading `holding`: release() reads them the other way round
        holding = self.holding
        if holding is None or self.clock() >= holding.deadline_ns:
            return None
        return holding.worker_id

    def wait_until_held(self, timeout: float | None = None) -> int:
        """Block until a worker id is held with its deadline ahead; return it.

        Raises WorkerIdUnavailableError after `timeout` (reacquire_timeout by
        default) and LeaseReleasedError once the lease was released.
        """
        if self.keeper is None and not self.released:
            raise RuntimeError("the lease holds no worker id yet: call acquire() first")
        timeout = self.reacquire_timeout if timeout is None else timeout
        with self.changed:
            self.changed.wait_for(
                lambda: self.released or self.valid_worker_id() is not None, timeout
            )
            if self.released:
                raise LeaseReleasedError("the worker-id lease was released")
            worker_id = self.valid_worker_id()
        if worker_id is None:
            raise WorkerIdUnavailableError(
                f"no worker id held for {timeout:g} s: "
                + ("etcd is unreachable" if self.holding else f"{self.space} taken")
            )
        return worker_id

    @property
    def worker_id(self) -> int | None:
        """The id last held (it may have expired: generators use valid_worker_id)."""
        return self.holding.worker_id if self.holding else None

    @property
    def space(self) -> str:
        """The id space in words: "all 32 worker ids (0-31) are" or "the 1 worker id (0) is"."""
        low, high = self.worker_ids[0], self.worker_ids[-1]
        if low == high:
            return f"the 1 worker id ({low}) is"
        return f"all {len(self.worker_ids)} worker ids ({low}-{high}) are"

    # -- acquiring, renewing, releasing -------------------------------------------------

    def acquire(self, timeout: float = 0.0) -> int:
        """Take the lowest free worker id and start renewing it in the background.

        Retries for up to `timeout` seconds while every id is taken; then raises
        NoFreeWorkerIdError (or EtcdUnavailableError when etcd is down).
        """
        if self.keeper is not None:
            raise RuntimeError("acquire() once per lease; the keeper re-acquires by itself")
        if self.released:
            raise LeaseReleasedError("the worker-id lease was released: make a new one")
        give_up = time.monotonic() + timeout
        while True:
            try:
                holding = self.try_acquire()
                break
            except (NoFreeWorkerIdError, EtcdUnavailableError):
                if time.monotonic() >= give_up:
                    raise
                time.sleep(self.poll_interval)
        if not self.publish(holding):  # released by another thread meanwhile
            self.revoke_quietly(holding.lease_id)
            raise LeaseReleasedError("the worker-id lease was released while it acquired")
        atexit.register(self.release)
        self.keeper = threading.Thread(target=self.keep, name="worker-id-lease", daemon=True)
        self.keeper.start()
        return holding.worker_id

    @property
    def poll_interval(self) -> float:
        # While waiting for an id: a free id is noticed within this; etcd itself
        # only checks for expired leases every 0.5 s.
        return min(0.5, self.ttl / 4)

    def try_acquire(self) -> Holding:
        """One attempt: a new lease, then the lowest id whose key does not exist."""
        sent = self.clock()  # before etcd starts the TTL: the deadline errs early
        lease_id, ttl = self.etcd.grant(self.ttl)
        try:
            taken = self.etcd.prefix(self.prefix)
            owner = json.dumps({"owner": self.owner, "lease": lease_id})
            for worker_id in self.worker_ids:
                key = f"{self.prefix}{worker_id:02d}"
                # Two workers racing for the same free id: the transaction lets one win.
                if key not in taken and self.etcd.create(key, owner, lease_id):
                    return Holding(
                        worker_id, lease_id, sent + ttl * 10**9 - self.margin_ns, time.time_ns()
                    )
        except BaseException:
            self.revoke_quietly(lease_id)
            raise
        self.revoke_quietly(lease_id)
        raise NoFreeWorkerIdError(
            f"no free worker id: {self.space} held by live leases in etcd at {self.etcd.url} "
            f"(keys {self.prefix}*); one frees up at most {self.ttl} s after its holder dies"
        )

    def keep(self) -> None:
        """The keeper thread: renew every TTL/3; re-acquire once the lease is gone."""
        while not self.stopping.wait(self.next_renewal()):
            try:
                holding = self.holding
                if holding is None or not self.renew(holding):
                    self.publish(None)  # gone: etcd expired it while we were away
                    acquired = self.try_acquire()
                    if not self.publish(acquired):  # released meanwhile
                        self.revoke_quietly(acquired.lease_id)
            except Exception:  # the keeper must outlive any one bad answer
                # etcd is down, every id is taken, or an answer made no sense.
                # An unrenewed deadline runs out by itself and generators stop
                # minting then; try again soon.
                self.stopping.wait(self.poll_interval)

    def next_renewal(self) -> float:
        """Seconds until the next keep-alive: TTL/3, or sooner when a slow etcd
        (a grant or renewal that took most of the margin) left the deadline close."""
        holding = self.holding
        if holding is None:
            return self.poll_interval
        left = (holding.deadline_ns - self.clock()) / 1e9
        return max(0.05, min(self.renew_every, left / 2))

    def renew(self, holding: Holding) -> bool:
        """One keep-alive; True if the lease (and the key on it) is still ours."""
        sent = self.clock()
        ttl = self.etcd.keepalive(holding.lease_id)
        if ttl <= 0:
            return False
        current = self.etcd.get(f"{self.prefix}{holding.worker_id:02d}")
        if current is None or current[1] != holding.lease_id:  # deleted by hand
            self.revoke_quietly(holding.lease_id)
            return False
        self.publish(holding._replace(deadline_ns=sent + ttl * 10**9 - self.margin_ns))
        return True

    def publish(self, holding: Holding | None) -> bool:
        """Make `holding` the current hold; False (and nothing changes) once released."""
        with self.changed:
            if self.released:
                return False
            if holding is not None and (
                not self.history or self.history[-1].lease_id != holding.lease_id
            ):
                self.history.append(holding)
            self.holding = holding
            self.changed.notify_all()
            return True

    def revoke_quietly(self, lease_id: int) -> None:
        try:
            self.etcd.revoke(lease_id)
        except EtcdUnavailableError:
            pass  # it expires by itself after its TTL

    def release(self) -> None:
        """Stop minting, keep the id a safety margin longer, then revoke the lease.

        Generators mint nothing after their current millisecond. The id is
        handed back (the lease revoked, its key deleted) only a margin after
        that, as an expiry would: the next holder's ids then carry later
        timestamps than ours, under the same clock assumption (class
        docstring). The wait is skipped when no generator ever asked
        (valid_worker_id never called). Idempotent.
        """
        with self.changed:
            if self.released:
                return
            self.released = True
            holding, self.holding = self.holding, None  # valid_worker_id() says None from now
            self.changed.notify_all()
        stopped = self.clock()
        self.stopping.set()
        if holding is not None and self.asked:
            # No id minted under this hold carries a timestamp read later than
            # `stopped`, nor later than the deadline; from there, one margin.
            until = min(stopped, holding.deadline_ns) + self.margin_ns
            time.sleep(max(0, until - self.clock()) / 1e9)
        if self.keeper is not None and self.keeper is not threading.current_thread():
            self.keeper.join(timeout=self.ttl)
        if holding is not None:
            self.revoke_quietly(holding.lease_id)
        atexit.unregister(self.release)

    def __enter__(self) -> WorkerIdLease:
        if self.keeper is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- command line: hold a worker id and mint with it, saying what happens --------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Lease a worker id from etcd and mint ids with it until stopped "
        "(Ctrl+C or SIGTERM releases the id). Pause it with Ctrl+Z for longer than "
        "the TTL, resume it with `fg`, and watch it stop minting and re-acquire."
    )
    parser.add_argument("--etcd", required=True, help="etcd client URL, e.g. http://127.0.0.1:2379")
    parser.add_argument(
        "--ttl", type=bounded(int, ETCD_MIN_TTL, 3600), default=DEFAULT_TTL, help="lease TTL, s"
    )
    parser.add_argument(
        "--margin", type=bounded(float, 0.01, 3600), help="safety margin, s (default TTL/5)"
    )
    parser.add_argument(
        "--worker-ids", type=bounded(int, 1, len(WORKER_IDS)), default=len(WORKER_IDS),
        help="the size of the id space: ids 0..N-1 (default 32)",
    )  # fmt: skip
    parser.add_argument(
        "--wait", type=bounded(float, 0, 3600), default=0.0,
        help="seconds to wait for a free id at start (default 0: fail at once)",
    )  # fmt: skip
    parser.add_argument(
        "--rate", type=bounded(int, 1, 1_000_000), default=1_000, help="ids per second to mint"
    )
    parser.add_argument(
        "--seconds", type=bounded(float, 0, 86_400), default=0.0,
        help="stop after this long (default 0: until Ctrl+C or SIGTERM)",
    )  # fmt: skip
    parser.add_argument(
        "--record", type=str, help="write every id minted and every hold, as JSON, to this file"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    if not args.etcd.startswith(("http://", "https://")):
        parser.error(f"--etcd must be an http:// URL, got {args.etcd!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    import IdGenerator  # the generator is the lease's user, not a part of it

    args = parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    say = (lambda *_: None) if args.quiet else (lambda text: print(text, flush=True))
    try:
        lease = WorkerIdLease(
            args.etcd,
            ttl=args.ttl,
            safety_margin=args.margin,
            worker_ids=range(args.worker_ids),
            reacquire_timeout=0.5,  # come back to check `stop` twice a second
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # opened now, so an unwritable path is refused before any id is leased
        record = Record(open(args.record, "w") if args.record else None)
    except OSError as err:
        print(f"error: cannot write --record {args.record}: {err.strerror}", file=sys.stderr)
        return 2
    give_up, waiting = time.monotonic() + args.wait, False
    while not stop.is_set():  # in short waits, so Ctrl+C or SIGTERM is heard while all are taken
        try:
            lease.acquire(timeout=min(0.5, max(0.0, give_up - time.monotonic())))
            break
        except (NoFreeWorkerIdError, EtcdUnavailableError) as err:
            if time.monotonic() >= give_up and not stop.is_set():
                print(f"error: {err}", file=sys.stderr)
                record.close([])
                return 1
            if not waiting:
                why = "no free worker id yet" if isinstance(err, NoFreeWorkerIdError) else err
                say(f"{why}: waiting up to {args.wait:g} s (Ctrl+C gives up)")
                waiting = True
    if lease.keeper is None:  # stopped while waiting: a stop asked for, not a failure
        record.close([])
        print("stopped while waiting for a free worker id; minted 0 ids", flush=True)
        return 0
    with lease:
        generator = None
        while generator is None and not stop.is_set():
            try:  # a slow etcd can hand out a hold whose deadline has already passed
                generator = IdGenerator.IdGenerator(lease=lease)
            except WorkerIdUnavailableError:
                continue
        seen_holds, fenced, clock_behind = 0, False, False
        burst = max(1, args.rate // 100)  # mint in 100 bursts a second
        until = time.monotonic() + args.seconds if args.seconds else float("inf")
        while not stop.is_set() and time.monotonic() < until:
            if len(lease.history) > seen_holds:
                for hold in lease.history[seen_holds:]:
                    say(f"holding worker id {hold.worker_id} (lease {hold.lease_id:x})")
                seen_holds, fenced = len(lease.history), False
            if lease.valid_worker_id() is None and not fenced:
                say("lease deadline passed: minting stopped until an id is held again")
                fenced = True
            minted: list[int] = []
            try:
                for _ in range(burst):
                    minted.append(generator.next_id())
            except WorkerIdUnavailableError:
                continue
            except IdGenerator.ClockMovedBackwardsError as err:
                if not clock_behind:  # refused, not a crash: retry while it catches up
                    say(f"{err} (retrying every 0.1 s)")
                clock_behind = True
                time.sleep(0.1)
                continue
            finally:
                record.add(minted)
            clock_behind = False
            time.sleep(burst / args.rate)
        history = list(lease.history)
    record.close(history)
    print(
        f"minted {record.count:,} ids in {len(history)} hold(s) of worker ids "
        f"{sorted({h.worker_id for h in history})}; released",
        flush=True,
    )
    return 0


class Record:
    """Counts the ids minted and, with --record, writes them out as they come,
    then every hold: {"ids": [...], "holds": [...]}. Memory stays flat however
    long the CLI runs (a list of every id grew by 40 bytes an id)."""

    def __init__(self, file: IO[str] | None):
        self.file, self.count = file, 0
        if file is not None:
            file.write('{"ids": [')

    def add(self, minted: list[int]) -> None:
        if self.file is not None and minted:
            self.file.write((", " if self.count else "") + ", ".join(map(str, minted)))
        self.count += len(minted)

    def close(self, history: list[Holding]) -> None:
        if self.file is not None:
            with self.file:
                self.file.write(f'], "holds": {json.dumps([h._asdict() for h in history])}}}')


if __name__ == "__main__":
    sys.exit(main())
