"""The other ways to map keys to nodes, with the ring's small interface.

Each class has `get_node(key)`, `get_nodes(keys)` (many keys at once, with
numpy), `add_node(node)`, `remove_node(node)`, `nodes` and `len()`, so
demo.py, bench.py and the tests run the same experiments on all of them.
README section "The alternatives" says when to pick which.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

import mmh3
import numpy as np
from ConsistentHashRing import (
    DEFAULT_VNODES,
    ConsistentHashRing,
    DuplicateNodeError,
    EmptyRingError,
    UnknownNodeError,
    check_weight,
    key_type_error,
)

MASK_64 = (1 << 64) - 1
DEFAULT_BALANCE_FACTOR = 1.25  # c in the bounded-loads cap ceil(c * mean load)
# Maglev's lookup table size M: prime, and ~100x the backends it serves, as the paper advises.
DEFAULT_TABLE_SIZE = 65_537
BATCH_ROWS = 4096  # keys scored at once by rendezvous get_nodes(): 4096 x N scores in memory
# Jump hash's 64-bit linear congruential generator (Lamping & Veach's constant).
# Its multiplication is what scatters the jumps; with 1 here, every key jumps alike.
JUMP_LCG_MULTIPLIER = 2862933555777941757


class UnsupportedChangeError(ValueError):
    """A strategy was asked for a membership change it cannot make."""


def _check_key(key: object) -> None:
    if not isinstance(key, str | bytes):
        raise key_type_error(key)


def key_hash_32(key: str | bytes) -> int:
    """MurmurHash3 x86 32-bit, unsigned: the key hash modulo hashing uses."""
    try:
        return mmh3.hash(key, 0, False)
    except TypeError:  # the try costs nothing until something is raised
        raise key_type_error(key) from None


def key_hash_64(key: str | bytes) -> int:
    """The low 64 bits of MurmurHash3 x64 128-bit, unsigned."""
    try:
        return mmh3.hash64(key, signed=False)[0]
    except TypeError:
        raise key_type_error(key) from None


def key_hashes_64(keys: Sequence[str | bytes]) -> np.ndarray:
    """key_hash_64 of every key, as a numpy uint64 array."""
    if isinstance(keys, str | bytes):
        raise TypeError("get_nodes() takes a list of keys; for one key use get_node(key)")
    keys = keys if isinstance(keys, Sequence) else list(keys)
    return np.fromiter(map(key_hash_64, keys), np.uint64, len(keys))


def _names(nodes: Sequence[str], indexes: np.ndarray) -> list[str]:
    """The node names at `indexes`, as a list (numpy object arrays index fastest)."""
    return np.array(nodes, dtype=object)[indexes].tolist()


def _node_list(nodes: Iterable[str]) -> Iterable[str]:
    """`nodes`, refusing a bare string (which would be one node per character)."""
    if isinstance(nodes, str | bytes):
        raise TypeError(f"nodes must be a list of names, e.g. [{nodes!r}], not {nodes!r}")
    return nodes


def _check_new(nodes: Iterable[str], node: str) -> None:
    if not isinstance(node, str):
        raise TypeError(f"node names must be str, got {type(node).__name__} {node!r}")
    if node in nodes:
        raise DuplicateNodeError(f"node {node!r} is already there; remove_node() it first")


def _check_lookup(nodes: list[str]) -> None:
    if not nodes:
        raise EmptyRingError("there are no nodes; add_node() one before looking keys up")


class ModuloHashing:
    """`nodes[hash(key) % N]`: perfectly simple, and N changing moves almost every key.

    A key stays put only if its hash gives the same node under the old N and
    the new one, which for N -> N+1 happens to about 1 key in N+1.
    """

    def __init__(self, nodes: Iterable[str] = ()) -> None:
        self._nodes: list[str] = []
        for node in _node_list(nodes):
            self.add_node(node)

    def get_node(self, key: str | bytes) -> str:
        _check_lookup(self._nodes)
        return self._nodes[key_hash_32(key) % len(self._nodes)]

    def get_nodes(self, keys: Sequence[str | bytes]) -> list[str]:
        _check_lookup(self._nodes)
        if isinstance(keys, str | bytes):
            raise TypeError("get_nodes() takes a list of keys; for one key use get_node(key)")
        hashes = np.fromiter(map(key_hash_32, keys), np.uint64, len(keys))
        return _names(self._nodes, hashes % np.uint64(len(self._nodes)))

    def add_node(self, node: str) -> None:
        _check_new(self._nodes, node)
        self._nodes.append(node)

    def remove_node(self, node: str) -> None:
        """Remove `node`; every node after it shifts down one slot."""
        if node not in self._nodes:
            raise UnknownNodeError(f"node {node!r} is not one of the {len(self._nodes)} nodes")
        self._nodes.remove(node)

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


def jump_bucket(key: int, num_buckets: int) -> int:
    """Lamping & Veach's jump consistent hash: the bucket in [0, num_buckets) of a 64-bit key.

    Picture the key's bucket as the number of buckets grows from 1. With b+1
    buckets the key sits in bucket b; when one more bucket is added it must
    move to the new bucket with probability 1/(new count), and stay put
    otherwise (which is what makes the hash consistent: keys only ever move to
    the newest bucket). Rather than test every count one by one, the paper
    jumps straight to the next count at which the key moves: with a uniform
    random r in (0, 1], that count is floor((b + 1) / r). The key seeds a
    64-bit linear congruential generator that supplies the r values, so the
    same key always makes the same jumps. About ln(num_buckets) jumps.
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    bucket, next_bucket = -1, 0
    while next_bucket < num_buckets:
        bucket = next_bucket
        key = (key * JUMP_LCG_MULTIPLIER + 1) & MASK_64  # the paper's LCG step
        # r = ((key >> 33) + 1) / 2**31 is a uniform value in (0, 1].
        next_bucket = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def jump_buckets(keys: np.ndarray, num_buckets: int) -> np.ndarray:
    """jump_bucket for a whole uint64 array of keys at once (the same steps, in numpy).

    Every key makes the same jumps as in jump_bucket; a key drops out of the
    loop once its next jump lands past the last bucket.
    """
    keys = keys.astype(np.uint64)  # a copy: the generator state is advanced in place
    bucket = np.full(len(keys), -1, dtype=np.int64)
    next_bucket = np.zeros(len(keys), dtype=np.int64)
    active = np.arange(len(keys))
    while active.size:
        bucket[active] = next_bucket[active]
        state = keys[active] * np.uint64(JUMP_LCG_MULTIPLIER) + np.uint64(1)  # wraps mod 2**64
        keys[active] = state
        r = float(1 << 31) / ((state >> np.uint64(33)) + np.uint64(1)).astype(np.float64)
        jumped = ((bucket[active] + 1) * r).astype(np.int64)
        next_bucket[active] = jumped
        active = active[jumped < num_buckets]
    return bucket


class JumpHashing:
    """Jump consistent hash over an ordered list of nodes: no ring, no memory per node.

    Balance is near perfect and a lookup is ~ln(N) multiplications, but nodes
    are numbered buckets: you can only add a node at the end or remove the
    last one. Removing one from the middle would renumber every node after it.
    """

    def __init__(self, nodes: Iterable[str] = ()) -> None:
        self._nodes: list[str] = []
        for node in _node_list(nodes):
            self.add_node(node)

    def get_node(self, key: str | bytes) -> str:
        _check_lookup(self._nodes)
        return self._nodes[jump_bucket(key_hash_64(key), len(self._nodes))]

    def get_nodes(self, keys: Sequence[str | bytes]) -> list[str]:
        _check_lookup(self._nodes)
        return _names(self._nodes, jump_buckets(key_hashes_64(keys), len(self._nodes)))

    def add_node(self, node: str) -> None:
        """Append `node` as the new highest bucket."""
        _check_new(self._nodes, node)
        self._nodes.append(node)

    def remove_node(self, node: str) -> None:
        """Remove `node`, which must be the last bucket (UnsupportedChangeError otherwise)."""
        if node not in self._nodes:
            raise UnknownNodeError(f"node {node!r} is not one of the {len(self._nodes)} buckets")
        if node != self._nodes[-1]:
            raise UnsupportedChangeError(
                f"jump hash can only remove the last bucket ({self._nodes[-1]!r}), not {node!r}: "
                "removing a middle bucket renumbers the rest; replace it in place instead"
            )
        self._nodes.pop()

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


def _fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser on an array: every input bit flips about half the output."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


class RendezvousHashing:
    """Highest random weight: each node scores the key; the highest score wins.

    The score of (node, key) is a 64-bit mix of the key's hash and the node's,
    so it looks random but every client computes the same one. Removing a node
    moves only the keys it won (their runner-up takes over), and a new node
    takes only the keys it now outscores everyone on. No ring and no virtual
    nodes, but each lookup scores all N nodes (numpy does it in one pass).
    """

    def __init__(self, nodes: Iterable[str] = ()) -> None:
        self._nodes: list[str] = []  # kept sorted, so a (2**-64-rare) tie goes to the smaller name
        self._node_hashes = np.zeros(0, dtype=np.uint64)
        for node in _node_list(nodes):
            self.add_node(node)

    def _scores(self, key_hashes: int | np.ndarray) -> np.ndarray:
        """N scores for one key hash; a row of N scores per key for an array of them."""
        return _fmix64(self._node_hashes ^ np.asarray(key_hashes, np.uint64)[..., np.newaxis])

    def get_node(self, key: str | bytes) -> str:
        _check_lookup(self._nodes)
        return self._nodes[int(np.argmax(self._scores(key_hash_64(key))))]

    def get_nodes(self, keys: Sequence[str | bytes]) -> list[str]:
        _check_lookup(self._nodes)
        hashes = key_hashes_64(keys)
        winners = [
            np.argmax(self._scores(hashes[start : start + BATCH_ROWS]), axis=-1)
            for start in range(0, len(hashes), BATCH_ROWS)
        ]
        return _names(self._nodes, np.concatenate(winners) if winners else np.zeros(0, int))

    def get_replicas(self, key: str | bytes, n: int) -> list[str]:
        """The `n` highest-scoring nodes, best first: rendezvous hashing's replicas."""
        _check_lookup(self._nodes)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self._nodes):
            raise ValueError(
                f"n must be a whole number between 1 and {len(self._nodes)} (the nodes), got {n!r}"
            )
        # ~score sorts the highest score first; stable, so ties keep name order.
        order = np.argsort(~self._scores(key_hash_64(key)), kind="stable")
        return [self._nodes[i] for i in order[:n]]

    def add_node(self, node: str) -> None:
        _check_new(self._nodes, node)
        self._nodes = sorted([*self._nodes, node])
        self._node_hashes = np.array([key_hash_64(name) for name in self._nodes], dtype=np.uint64)

    def remove_node(self, node: str) -> None:
        if node not in self._nodes:
            raise UnknownNodeError(f"node {node!r} is not one of the {len(self._nodes)} nodes")
        index = self._nodes.index(node)
        del self._nodes[index]
        self._node_hashes = np.delete(self._node_hashes, index)

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


class WeightedRendezvousHashing:
    """Rendezvous hashing where a node of weight w wins w/W of the keys (the logarithmic method).

    Each (node, key) score is turned into a uniform u in (0, 1), and the node
    with the highest ln(u) / w wins. Why that works: -ln(u) / w is an
    exponential random variable with rate w, and of several independent
    exponentials the smallest is the one of rate w_i with probability
    w_i / sum(w). (Scaling the score by w, the naive way, does not give
    proportional shares.) A node's arrival, departure or change of weight
    moves only keys to or from that node: no other node's score changes.
    """

    def __init__(self, nodes: Iterable[str] | Mapping[str, float] = ()) -> None:
        self._nodes: list[str] = []  # sorted, as in RendezvousHashing
        self._weights: dict[str, float] = {}
        self._node_hashes = np.zeros(0, dtype=np.uint64)
        self._weight_array = np.zeros(0)
        if isinstance(nodes, Mapping):
            for node, weight in nodes.items():
                self.add_node(node, weight)
        else:
            for node in _node_list(nodes):
                self.add_node(node)

    def _winners(self, key_hashes: int | np.ndarray) -> np.ndarray:
        """The index of the winning node for one key hash, or for each of an array."""
        mixed = _fmix64(self._node_hashes ^ np.asarray(key_hashes, np.uint64)[..., np.newaxis])
        # The top 53 bits as a float in (0, 1): the +0.5 keeps u away from 0 and 1.
        u = ((mixed >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
        # A weight far below the largest one sends its scores to -inf: it never wins.
        with np.errstate(over="ignore", divide="ignore"):
            return np.argmax(np.log(u) / self._weight_array, axis=-1)

    def get_node(self, key: str | bytes) -> str:
        _check_lookup(self._nodes)
        return self._nodes[int(self._winners(key_hash_64(key)))]

    def get_nodes(self, keys: Sequence[str | bytes]) -> list[str]:
        _check_lookup(self._nodes)
        hashes = key_hashes_64(keys)
        winners = [
            self._winners(hashes[start : start + BATCH_ROWS])
            for start in range(0, len(hashes), BATCH_ROWS)
        ]
        return _names(self._nodes, np.concatenate(winners) if winners else np.zeros(0, int))

    def add_node(self, node: str, weight: float = 1) -> None:
        _check_new(self._nodes, node)
        check_weight(node, weight)
        self._weights[node] = weight
        self._nodes = sorted([*self._nodes, node])
        self._refresh()

    def remove_node(self, node: str) -> None:
        if node not in self._weights:
            raise UnknownNodeError(f"node {node!r} is not one of the {len(self._nodes)} nodes")
        del self._weights[node]
        self._nodes.remove(node)
        self._refresh()

    def set_weight(self, node: str, weight: float) -> None:
        """Change `node`'s weight: keys move only to it (weight up) or from it (down)."""
        if node not in self._weights:
            raise UnknownNodeError(f"node {node!r} is not one of the {len(self._nodes)} nodes")
        check_weight(node, weight)
        self._weights[node] = weight
        self._refresh()

    def weight(self, node: str) -> float:
        if node not in self._weights:
            raise UnknownNodeError(f"node {node!r} is not one of the {len(self._nodes)} nodes")
        return self._weights[node]

    def _refresh(self) -> None:
        self._node_hashes = np.array([key_hash_64(name) for name in self._nodes], dtype=np.uint64)
        # Shares depend only on the weights' ratios, so they are scaled (by a power
        # of two, which is exact) to a largest near 1: weights of 1e-310 and 2e-310
        # must split the keys 1:2, not send ln(u) / w to -inf for both.
        weights = [float(self._weights[name]) for name in self._nodes]
        _, exponent = math.frexp(max(weights, default=1.0))
        self._weight_array = np.array([math.ldexp(w, -exponent) for w in weights])

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


def is_prime(number: int) -> bool:
    """Trial division: plenty for table sizes up to a few million."""
    if number < 2:
        return False
    return all(number % divisor for divisor in range(2, math.isqrt(number) + 1))


def maglev_permutation(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of `name`'s preference list: slots offset, offset + skip, ... mod size.

    Two independent hashes of the name (the two halves of a 128-bit
    MurmurHash3), so nodes start in different places *and* step differently.
    """
    first, second = mmh3.hash64(name, signed=False)
    return first % size, second % (size - 1) + 1


def maglev_table(nodes: Sequence[str], size: int) -> list[int]:
    """Maglev's lookup table (Eisenbud et al., NSDI 2016, section 3.4): slot -> node index.

    Every node gets its own permutation of the `size` slots: start at
    `offset`, step by `skip` (both from hashes of its name; `size` is prime,
    so any skip visits every slot). The nodes then take turns, each claiming
    the next slot of its permutation that nobody holds yet, until the table is
    full. Taking turns gives every node size/N slots, give or take one, and
    because each node follows its own permutation, a node leaving frees its
    slots to the others while most other slots keep their owner.
    """
    offsets, skips = [], []
    for name in nodes:
        offset, skip = maglev_permutation(name, size)
        offsets.append(offset)
        skips.append(skip)
    table = [-1] * size
    cursor = offsets[:]  # where each node's permutation continues
    filled = 0
    while True:
        for node, skip in enumerate(skips):
            slot = cursor[node]
            while table[slot] >= 0:  # taken: try the node's next preference
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = node
            slot += skip
            cursor[node] = slot - size if slot >= size else slot
            filled += 1
            if filled == size:
                return table


class MaglevHashing:
    """Maglev hashing: a lookup table of M slots, each naming a node; a key reads one slot.

    The table (see maglev_table) is rebuilt whenever nodes change, by the same
    deterministic procedure on every client (nodes in name order). A lookup is
    one hash and one list index, and every node holds M/N slots give or take
    one, so balance is as good as the key hash allows. The price: a change of
    nodes reshuffles a few slots between nodes that stayed, so slightly more
    keys move than the minimum (the paper measures it; so do demo.py and the
    tests).
    """

    def __init__(self, nodes: Iterable[str] = (), table_size: int = DEFAULT_TABLE_SIZE) -> None:
        if (
            isinstance(table_size, bool)
            or not isinstance(table_size, int)
            or not 2 < table_size <= 10_000_019
            or not is_prime(table_size)
        ):
            raise ValueError(
                f"table_size must be a prime between 3 and 10,000,019 (e.g. 65537), "
                f"got {table_size!r}"
            )
        self.table_size = table_size
        self._nodes: list[str] = []
        self._slots: list[str] = []  # slot -> node name
        for node in _node_list(nodes):
            _check_new(self._nodes, node)
            self._nodes.append(node)
        if len(self._nodes) > table_size:
            raise ValueError(f"a table of {table_size} slots holds at most that many nodes")
        self._rebuild()

    def get_node(self, key: str | bytes) -> str:
        _check_lookup(self._nodes)
        return self._slots[key_hash_64(key) % self.table_size]

    def get_nodes(self, keys: Sequence[str | bytes]) -> list[str]:
        _check_lookup(self._nodes)
        slots = key_hashes_64(keys) % np.uint64(self.table_size)
        return np.array(self._slots, dtype=object)[slots].tolist()

    def add_node(self, node: str) -> None:
        _check_new(self._nodes, node)
        if len(self._nodes) >= self.table_size:
            raise ValueError(f"a table of {self.table_size} slots holds at most that many nodes")
        self._nodes.append(node)
        self._rebuild()

    def remove_node(self, node: str) -> None:
        if node not in self._nodes:
            raise UnknownNodeError(f"node {node!r} is not one of the {len(self._nodes)} nodes")
        self._nodes.remove(node)
        self._rebuild()

    def slot_counts(self) -> dict[str, int]:
        """How many of the M slots each node holds (M/N, give or take one)."""
        counts = Counter(self._slots)
        return {node: counts[node] for node in self._nodes}

    def _rebuild(self) -> None:
        self._nodes.sort()
        table = maglev_table(self._nodes, self.table_size) if self._nodes else []
        self._slots = [self._nodes[index] for index in table]

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


class BoundedLoadHashing:
    """Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam).

    Every node may hold at most cap = ceil(c * m / n) keys (m keys, n nodes).
    Keys are placed in the order they arrived: each walks clockwise from its
    ring position and takes the first node that is still below the cap. So no
    node ever exceeds c times the mean, at the price of sending some keys past
    their nearest node (and of moving more keys when nodes change).

    The placement is always exactly what placing all keys afresh, in arrival
    order, would give: a change of nodes, or a new key that raises the cap,
    re-places everything; a new key under an unchanged cap is placed alone,
    which gives the same result.
    """

    def __init__(
        self,
        nodes: Iterable[str] = (),
        c: float = DEFAULT_BALANCE_FACTOR,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        if (
            isinstance(c, bool)
            or not isinstance(c, numbers.Real)
            or not math.isfinite(c)
            or not c >= 1
        ):
            raise ValueError(f"c must be a finite number >= 1 (1 means perfectly even), got {c!r}")
        # Exact arithmetic for the cap: with floats, ceil(1.1 * 100 / 10) is 12.
        self.c = Fraction(str(c))
        self._ring = ConsistentHashRing(nodes, vnodes=vnodes)
        self._placement: dict[str | bytes, str] = {}  # key -> node, in arrival order
        self._loads: Counter[str] = Counter()

    def capacity(self, keys: int | None = None) -> int:
        """ceil(c * keys / nodes), for the current number of keys by default."""
        if not len(self._ring):
            raise EmptyRingError("there are no nodes, so there is no capacity")
        keys = len(self._placement) if keys is None else keys
        return -(-self.c.numerator * keys // (self.c.denominator * len(self._ring)))

    def get_node(self, key: str | bytes) -> str:
        """The node holding `key`; a key seen for the first time is placed now."""
        node = self._placement.get(key)
        if node is None:
            self.add_keys([key])
            node = self._placement[key]
        return node

    def get_nodes(self, keys: Sequence[str | bytes]) -> list[str]:
        """The node of each key, placing new ones first (in the given order)."""
        if isinstance(keys, str | bytes):
            raise TypeError("get_nodes() takes a list of keys; for one key use get_node(key)")
        keys = keys if isinstance(keys, Sequence) else list(keys)
        self.add_keys(keys)
        placement = self._placement
        return [placement[key] for key in keys]

    def add_keys(self, keys: Iterable[str | bytes]) -> None:
        """Place new keys (ones already placed are ignored), in the given order."""
        new = [key for key in dict.fromkeys(keys) if key not in self._placement]
        if not new:
            return
        for key in new:  # check them all first: a bad key half-way must change nothing
            _check_key(key)
        if not len(self._ring):
            raise EmptyRingError("there are no nodes; add_node() one before placing keys")
        old_cap = self.capacity() if self._placement else None
        cap = self.capacity(len(self._placement) + len(new))
        if cap != old_cap:
            self._replace_all(cap, [*self._placement, *new])
        else:
            for key in new:
                self._place(key, cap)

    def add_node(self, node: str) -> None:
        self._ring.add_node(node)
        self._replace_all()

    def remove_node(self, node: str) -> None:
        if len(self._ring) == 1 and node in self._ring and self._placement:
            raise UnsupportedChangeError(
                f"{node!r} is the last node and holds {len(self._placement)} keys; "
                "add another node before removing it"
            )
        self._ring.remove_node(node)
        self._replace_all()

    @property
    def loads(self) -> dict[str, int]:
        """Keys held by each node (nodes holding none included)."""
        return {node: self._loads[node] for node in self._ring.nodes}

    @property
    def placement(self) -> dict[str | bytes, str]:
        """A copy of key -> node for every placed key, in arrival order."""
        return dict(self._placement)

    @property
    def nodes(self) -> list[str]:
        return self._ring.nodes

    def __len__(self) -> int:
        return len(self._ring)

    def _place(self, key: str | bytes, cap: int) -> None:
        node = self._ring.get_node(key)
        if self._loads[node] >= cap:  # nearest node full: walk on clockwise
            node = next(n for n in self._ring.walk(key) if self._loads[n] < cap)
        self._placement[key] = node
        self._loads[node] += 1

    def _replace_all(self, cap: int | None = None, keys: list | None = None) -> None:
        keys = list(self._placement) if keys is None else keys
        self._placement = {}
        self._loads = Counter()
        if not keys:
            return
        cap = self.capacity(len(keys)) if cap is None else cap
        for key in keys:
            self._place(key, cap)
