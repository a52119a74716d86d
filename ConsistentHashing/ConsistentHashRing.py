"""A consistent-hash ring with virtual nodes, weights, replicas, and a ketama mode.

Keys and nodes are hashed onto the same circle of 2**32 positions; a key
belongs to the first virtual node at or after its position, wrapping round
past the top. README sections "The ring", "Virtual nodes", "The directory",
"Replicas", "Weights" and "Ketama" explain why.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import mmh3
import numpy as np

HashFunction = Callable[[str | bytes], int]

# The circle: positions 0 .. 2**32 - 1. Any hash function will do as long as it
# gives the same int in every process (so not Python's salted hash()); the ring
# keeps its low 32 bits, `hash & MASK_32`.
POSITION_BITS = 32
MASK_32 = (1 << POSITION_BITS) - 1

# MurmurHash3 (x86, 32-bit, seed 0): fast, well mixed, the same on every machine.
# mmh3.hash returns it signed; its low 32 bits are the unsigned value.
DEFAULT_HASH: HashFunction = mmh3.hash

# Virtual nodes per unit of weight. 160 is the ketama (memcached) figure and
# uhashring's default; the busiest node's excess shrinks like 1/sqrt(vnodes).
DEFAULT_VNODES = 160
# The most virtual nodes one node may have (about a second to hash, 70 MB to
# hold): a weight or vnodes beyond it is a mistake, not a bigger machine.
MAX_VNODES_PER_NODE = 1_000_000

# The directory cuts the circle into 2**b equal arcs ("buckets") with about
# this many points each, so a lookup bisects a handful of points, not all N*V.
POINTS_PER_BUCKET = 8
# ... and is rebuilt (one pass over every point, like a dict growing) only when
# the average drifts this many times above or below that.
DIRECTORY_SLACK = 4


class EmptyRingError(LookupError):
    """A key was looked up on a ring that has no nodes."""


class UnknownNodeError(KeyError):
    """A node that is not on the ring was named."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class DuplicateNodeError(ValueError):
    """A node that is already on the ring was added again."""


class InvalidWeightError(ValueError):
    """A weight that is not a finite number above zero."""


def key_type_error(key: object) -> TypeError:
    """The error for a key the hash cannot take (the ring hashes str and bytes only)."""
    return TypeError(
        f"keys must be str or bytes, got {type(key).__name__} {key!r}; "
        "convert it first, e.g. str(key)"
    )


def vnode_label(node: str, index: int) -> str:
    """The string hashed to place virtual node `index` of `node`.

    The index is the part after the last '#', and it has no '#' of its own,
    so two different (node, index) pairs never share a label.
    """
    return f"{node}#{index}"


def check_weight(node: str, weight: object) -> None:
    """Refuse a weight that is not a finite real number above 0 (InvalidWeightError)."""
    if (
        isinstance(weight, bool)
        or not isinstance(weight, numbers.Real)  # int, float, Fraction, numpy numbers
        or not _is_finite(weight)
        or weight <= 0
    ):
        raise InvalidWeightError(
            f"weight of node {node!r} must be a finite number above 0, got {weight!r}"
        )


def _is_finite(number: numbers.Real) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond any float, e.g. 10**400
        return False


class FlatPoints:
    """The ring as numpy arrays, for placing many keys at once (get_nodes).

    `np.searchsorted` over all N*V points costs a cache miss at every step of
    its bisection: about 100 ns a key for 16,000 points. Like the directory
    of get_node, a table of where each of 2**b equal arcs starts among the
    points narrows every key to its own arc, a few points long; a few
    vectorised steps over all the keys at once then count the points of that
    arc below each key. About 3x faster than one searchsorted, same answers.
    """

    MAX_STEPS = 16  # arcs fuller than this (a hash that is far from uniform): plain bisection

    def __init__(self, positions: np.ndarray, owner_codes: np.ndarray, names: np.ndarray):
        self.positions = positions  # sorted, uint32
        self.owner_codes = owner_codes  # owner of each point, then the first point's again
        self.names = names  # node names, by code
        # about 8 arcs a point: each arc holds 0 to a few points
        bits = min(20, max(8, len(positions).bit_length() + 3))
        self.shift = np.uint32(POSITION_BITS - bits)
        starts = np.arange(2**bits + 1, dtype=np.uint64) << np.uint64(self.shift)
        self.arc_starts = np.searchsorted(positions, starts, side="left")
        self.steps = int(np.diff(self.arc_starts).max())
        self.padded = np.append(positions, np.uint32(0))  # index len(positions) stays in range

    def place(self, hashes: np.ndarray) -> np.ndarray:
        """For each uint32 hash, the index of the first point at or after it
        (len(positions) past the last point: the wrap-round)."""
        if self.steps > self.MAX_STEPS:
            return np.searchsorted(self.positions, hashes, side="left")
        arc = hashes >> self.shift
        found = self.arc_starts[arc]  # the points before the key's arc...
        end = self.arc_starts[arc + 1]
        for _ in range(self.steps):  # ...plus those in its arc that lie below the key
            below = (found < end) & (self.padded[found] < hashes)
            if not below.any():
                break
            found += below
        return found


class ConsistentHashRing:
    """A hash ring: `get_node(key)` hashes the key and bisects a few sorted points.

    The points (virtual nodes) are kept sorted by (position, node name) in a
    *directory*: the circle is cut into 2**b equal arcs, and arc i,
    `_arcs[i] = (positions, owners)`, holds the sorted positions that fall in
    it and their owners. `owners` has one entry more than `positions`: the
    owner of the first point *after* the arc, where a key beyond the arc's last
    point belongs (for the last arc, that wraps round to the first point).
    So a lookup is: the arc from the key's top bits, one bisect over its few
    points, one list index. Adding or removing a node touches only the arcs
    its V points land in (and the "next owner" of the empty arcs just before
    them), never the other N*V points.

    Two virtual nodes can land on the same position (a 32-bit circle holding
    160,000 points has about three such pairs). The ring orders them by node
    name, so the node with the smaller name owns the arc before that position
    and the other owns an empty arc; when one of them leaves, the other takes
    over. The ring therefore depends only on which nodes are on it, never on
    the order they were added in.
    """

    def __init__(
        self,
        nodes: Iterable[str] | Mapping[str, float] = (),
        vnodes: int = DEFAULT_VNODES,
        hash_function: HashFunction = DEFAULT_HASH,
    ) -> None:
        """Build a ring of `nodes` (names, or a mapping of name -> weight).

        `vnodes` is the number of virtual nodes for a node of weight 1; a node
        of weight w gets round(vnodes * w) of them (at least one).
        `hash_function` maps a str or bytes to an int and must give the same
        answer in every process; the ring uses the int's low 32 bits.
        """
        if (
            isinstance(vnodes, bool)
            or not isinstance(vnodes, int)
            or not 1 <= vnodes <= MAX_VNODES_PER_NODE
        ):
            raise ValueError(
                f"vnodes must be a whole number from 1 to {MAX_VNODES_PER_NODE:,}, got {vnodes!r}"
            )
        self.vnodes = vnodes
        self._hash = hash_function
        self._weights: dict[str, float] = {}  # node -> weight, in the order added
        self._point_counts: dict[str, int] = {}  # node -> how many labels it has hashed
        self._points = 0  # virtual nodes on the ring
        self._flat: FlatPoints | None = None  # numpy arrays for get_nodes(), built on demand

        if isinstance(nodes, str | bytes):
            raise TypeError(f"nodes must be a list of names, e.g. [{nodes!r}], not {nodes!r}")
        named = nodes.items() if isinstance(nodes, Mapping) else ((node, 1) for node in nodes)
        for node, weight in named:
            self._check_new_node(node, weight)
            self._weights[node] = weight
        self._rebuild(self._label_counts(self._weights))

    # -- lookups -------------------------------------------------------------

    def get_node(self, key: str | bytes) -> str:
        """The node that owns `key`; raises EmptyRingError if there is none."""
        try:
            position = self._hash(key) & MASK_32
        except TypeError:  # the try costs nothing until something is raised
            if isinstance(key, str | bytes):
                raise  # the hash function's fault, not the key's
            raise key_type_error(key) from None
        positions, owners = self._arcs[position >> self._shift]
        try:
            return owners[bisect_left(positions, position)]
        except IndexError:  # only an empty ring has an arc with no next owner
            raise EmptyRingError(
                "the ring has no nodes; add_node() one before looking keys up"
            ) from None

    def get_nodes(self, keys: Sequence[str | bytes]) -> list[str]:
        """The owner of each of `keys`, in order: `get_node` for a million keys at once.

        The keys are hashed in one pass and placed in numpy arrays built from
        the directory on the first call after a change, then reused: the sorted
        points, and a table of where each of 2**b arcs starts among them
        (`FlatPoints.place`). Same answers as get_node.
        """
        if isinstance(keys, str | bytes):
            raise TypeError("get_nodes() takes a list of keys; for one key use get_node(key)")
        keys = keys if isinstance(keys, Sequence) else list(keys)
        flat = self._flat_points()
        found = flat.place(self._key_positions(keys))
        return flat.names[flat.owner_codes[found]].tolist()

    def get_replicas(self, key: str | bytes, n: int) -> list[str]:
        """`n` distinct physical nodes for `key`, its owner first.

        They are the first `n` different nodes met walking clockwise from the
        key, so every client picks the same replicas, and adding or removing a
        node changes a key's list only where that node appears in it.
        Raises ValueError unless n is a whole number with 1 <= n <= len(self).
        """
        if not self._weights:
            raise EmptyRingError("the ring has no nodes; add_node() one before looking keys up")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self._weights):
            raise ValueError(
                f"n must be a whole number between 1 and {len(self._weights)} (the nodes), "
                f"got {n!r}"
            )
        replicas = []
        for node in self.walk(key):
            replicas.append(node)
            if len(replicas) == n:
                return replicas
        raise ValueError(  # only a ketama server of tiny weight can have no points at all
            f"n={n}, but only {len(replicas)} of the {len(self._weights)} nodes have points on "
            f"the ring; nodes without points hold no keys: {self._nodes_without_points()}"
        )

    def walk(self, key: str | bytes) -> Iterator[str]:
        """Yield every physical node that has points once, in clockwise order from `key`.

        The first node yielded is `get_node(key)`. Replicas take the first few;
        bounded loads takes the first one that still has room.
        """
        if not self._points:
            return
        try:
            position = self._hash(key) & MASK_32
        except TypeError:
            raise key_type_error(key) from None
        first_arc = position >> self._shift
        start = bisect_left(self._arcs[first_arc][0], position)
        arcs = len(self._arcs)
        seen: set[str] = set()
        # The first arc from `start` on, every other arc, then the first arc's
        # points before `start`, which are the last ones clockwise.
        for step in range(arcs + 1):
            _, owners = self._arcs[(first_arc + step) % arcs]
            if step == 0:
                run = owners[start:-1]
            elif step == arcs:
                run = owners[:start]
            else:
                run = owners[:-1]
            for node in run:
                if node not in seen:
                    seen.add(node)
                    yield node
                    if len(seen) == len(self._weights):
                        return

    # -- membership ------------------------------------------------------------

    def add_node(self, node: str, weight: float = 1) -> None:
        """Put `node` on the ring with round(vnodes * weight) virtual nodes.

        Only keys whose position now falls just before one of the new virtual
        nodes move, and they all move to `node`. Cost: V hashes, and for each
        point a bisect and an insert into one arc of ~8 points.
        Raises DuplicateNodeError or InvalidWeightError.
        """
        self._check_new_node(node, weight)
        self._weights[node] = weight
        self._point_counts[node] = 0
        self._apply_counts([node])

    def remove_node(self, node: str) -> None:
        """Take `node` and all its virtual nodes off the ring.

        Exactly the keys it owned move, each to the next node clockwise; no
        other key moves. Same cost as add_node. Raises UnknownNodeError.
        """
        if node not in self._weights:
            raise UnknownNodeError(
                f"node {node!r} is not on the ring; its nodes are {self._sample_of_nodes()}"
            )
        self._resize_node(node, 0)
        del self._weights[node], self._point_counts[node]
        self._apply_counts([])

    def set_weight(self, node: str, weight: float) -> None:
        """Give `node` a new weight: it gains or loses virtual nodes at the end of its list.

        Only keys moving to `node` (weight up) or away from it (weight down) move.
        """
        if node not in self._weights:
            raise UnknownNodeError(f"node {node!r} is not on the ring")
        self._check_weight(node, weight)
        self._weights[node] = weight
        self._apply_counts([node])

    @property
    def nodes(self) -> list[str]:
        """The physical nodes, in the order they were added."""
        return list(self._weights)

    def weight(self, node: str) -> float:
        """The weight `node` was added with; raises UnknownNodeError."""
        if node not in self._weights:
            raise UnknownNodeError(f"node {node!r} is not on the ring")
        return self._weights[node]

    def vnode_count(self, node: str) -> int:
        """How many virtual nodes (points on the circle) `node` has."""
        if node not in self._weights:
            raise UnknownNodeError(f"node {node!r} is not on the ring")
        return self.points_per_label * self._point_counts[node]

    def points(self) -> list[tuple[int, str]]:
        """Every virtual node as (position, node), in ring order (a copy)."""
        return [
            pair
            for positions, owners in self._arcs
            for pair in zip(positions, owners[:-1], strict=True)
        ]

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node: object) -> bool:
        return node in self._weights

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self._weights)} nodes, "
            f"{self._points} virtual nodes, {len(self._arcs)} arcs, vnodes={self.vnodes})"
        )

    # -- what a subclass may change: how a node's points are made ------------------

    points_per_label = 1  # positions one hashed label gives (ketama takes 4 from an md5)

    def _label_counts(self, nodes: Iterable[str]) -> dict[str, int]:
        """How many labels of each of `nodes` are hashed: round(vnodes * weight), at least one."""
        return {node: max(1, round(self.vnodes * self._weights[node])) for node in nodes}

    def _label_positions(self, node: str, indexes: range) -> list[int]:
        """The positions of labels `indexes` of `node`."""
        hash_function = self._hash
        return [hash_function(vnode_label(node, i)) & MASK_32 for i in indexes]

    # -- the directory -------------------------------------------------------------

    def _apply_counts(self, changed: Iterable[str]) -> None:
        """Bring the `changed` nodes' points up or down to what their weights ask for."""
        if not self._points:  # an empty directory has no next owners to keep: lay it out
            self._rebuild(self._label_counts(self._weights))
            return
        for node, count in self._label_counts(changed).items():
            if count != self._point_counts[node]:
                self._resize_node(node, count)
        if not self._points or not self._directory_fits():
            self._rebuild(self._label_counts(self._weights))

    def _resize_node(self, node: str, count: int) -> None:
        """Add or remove labels at the end of `node`'s list until it has `count`."""
        had = self._point_counts[node]
        if count > had:
            for position in self._label_positions(node, range(had, count)):
                self._insert(position, node)
        elif count < had:
            for position in self._label_positions(node, range(count, had)):
                self._delete(position, node)
        self._point_counts[node] = count

    def _insert(self, position: int, node: str) -> None:
        arc = position >> self._shift
        positions, owners = self._arcs[arc]
        i = bisect_left(positions, position)
        # Equal positions stay ordered by node name (see the class docstring).
        while i < len(positions) and positions[i] == position and owners[i] < node:
            i += 1
        positions.insert(i, position)
        owners.insert(i, node)
        self._points += 1
        self._flat = None
        if i == 0:  # the arc's first point changed: so did the next owner of the arcs before
            self._hand_back(arc)

    def _delete(self, position: int, node: str) -> None:
        arc = position >> self._shift
        positions, owners = self._arcs[arc]
        i = bisect_left(positions, position)
        while owners[i] != node:  # step past other nodes sharing this position
            i += 1
        del positions[i], owners[i]
        self._points -= 1
        self._flat = None
        if i == 0:
            self._hand_back(arc)

    def _hand_back(self, arc: int) -> None:
        """Make `arc`'s first owner the next owner of the arcs before it.

        Walks back over empty arcs to the first one that has points of its own
        (at most all the way round, back to `arc` itself).
        """
        first_owner = self._arcs[arc][1][0]
        arcs = len(self._arcs)
        before = arc
        while True:
            before = (before - 1) % arcs
            positions, owners = self._arcs[before]
            owners[-1] = first_owner
            if positions or before == arc:
                return

    def _directory_fits(self) -> bool:
        arcs = len(self._arcs)
        per_arc = self._points / arcs
        too_crowded = per_arc > POINTS_PER_BUCKET * DIRECTORY_SLACK
        too_sparse = per_arc < POINTS_PER_BUCKET / DIRECTORY_SLACK and arcs > 1
        return not (too_crowded or too_sparse)

    def _rebuild(self, counts: dict[str, int]) -> None:
        """Lay every point out again in a directory sized for the ring (a full pass).

        Points are dealt into their arcs first and each arc is sorted on its
        own: many sorts of ~8 pairs instead of one sort of all N*V.
        """
        self._point_counts = dict(counts)
        self._points = self.points_per_label * sum(counts.values())
        self._flat = None
        bits = max(0, round(math.log2(self._points / POINTS_PER_BUCKET))) if self._points else 0
        self._shift = shift = POSITION_BITS - bits
        dealt: list[list[tuple[int, str]]] = [[] for _ in range(1 << bits)]
        for node, count in counts.items():
            for position in self._label_positions(node, range(count)):
                dealt[position >> shift].append((position, node))
        self._arcs: list[tuple[list[int], list[str]]] = []
        for pairs in dealt:
            pairs.sort()  # by position, then node name (see the class docstring)
            self._arcs.append(([position for position, _ in pairs], [node for _, node in pairs]))
        if not self._points:
            return  # every arc's owner list stays empty: lookups raise EmptyRingError
        next_owner = next(owners[0] for _, owners in self._arcs if owners)  # the wrap-round
        for positions, owners in reversed(self._arcs):
            owners.append(next_owner)
            if positions:
                next_owner = owners[0]

    # -- batch lookups ---------------------------------------------------------------

    def _flat_points(self) -> FlatPoints:
        if not self._points:
            raise EmptyRingError("the ring has no nodes; add_node() one before looking keys up")
        if self._flat is None:
            names = list(self._weights)
            code = {node: i for i, node in enumerate(names)}
            pairs = self.points()
            positions = np.fromiter((p for p, _ in pairs), np.uint32, len(pairs))
            owner_codes = np.fromiter(
                (code[node] for _, node in [*pairs, pairs[0]]), np.intp, len(pairs) + 1
            )
            self._flat = FlatPoints(positions, owner_codes, np.array(names, dtype=object))
        return self._flat

    def _key_positions(self, keys: Sequence[str | bytes]) -> np.ndarray:
        try:
            if self._hash is mmh3.hash:
                # The default hash, in C all the way: its signed 32-bit result,
                # viewed as unsigned, is exactly its low 32 bits.
                return np.fromiter(map(mmh3.hash, keys), np.int32, len(keys)).view(np.uint32)
            hash_function = self._hash
            return np.fromiter((hash_function(k) & MASK_32 for k in keys), np.uint32, len(keys))
        except TypeError:
            bad = next(key for key in keys if not isinstance(key, str | bytes))
            raise key_type_error(bad) from None

    # -- checks ------------------------------------------------------------------------

    def _check_new_node(self, node: str, weight: float) -> None:
        if not isinstance(node, str):
            raise TypeError(f"node names must be str, got {type(node).__name__} {node!r}")
        if node in self._weights:
            raise DuplicateNodeError(
                f"node {node!r} is already on the ring; remove_node() it first to re-add it"
            )
        self._check_weight(node, weight)

    def _check_weight(self, node: str, weight: object) -> None:
        check_weight(node, weight)
        if self.vnodes * weight > MAX_VNODES_PER_NODE:
            raise InvalidWeightError(
                f"weight {weight!r} would give node {node!r} {float(self.vnodes * weight):.3g} "
                f"virtual nodes; at most {MAX_VNODES_PER_NODE:,} (vnodes={self.vnodes})"
            )

    def _nodes_without_points(self) -> str:
        return ", ".join(repr(node) for node, count in self._point_counts.items() if not count)

    def _sample_of_nodes(self, limit: int = 5) -> str:
        names = list(self._weights)
        shown = ", ".join(repr(name) for name in names[:limit])
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return f"[{shown}{more}]" if names else "[] (the ring is empty)"


# -- ketama ---------------------------------------------------------------------------

KETAMA_LABELS = 40  # md5 digests per server of average weight: 40 x 4 = 160 points
KETAMA_MAX_WEIGHT = 2**32 - 1  # libketama's memory sizes; float32 keeps them finite


def ketama_hash(key: str | bytes) -> int:
    """libketama's ketama_hashi(): the first 4 bytes of md5(key), little-endian."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.md5(data).digest()[:4], "little")


class KetamaRing(ConsistentHashRing):
    """The ring as libketama (Last.fm, 2007) builds it, so it agrees with memcached clients.

    What libketama does, and this class copies:
    - a server named "10.0.1.1:11211" hashes the labels "10.0.1.1:11211-0",
      "-1", ... with md5, and each 16-byte digest gives four points (its four
      4-byte words, little-endian);
    - a server of weight w (libketama: its memory) among n servers of total
      weight W gets floorf(w/W * 40 * n) digests, computed in single
      precision as its C code does: 40 digests (160 points) each when the
      weights are equal, and 39 at some server counts (61 is the first),
      where the float32 rounding falls just below 40;
    - a key hashes to the first 4 bytes of md5(key), and belongs to the first
      point at or after it, wrapping round to the first point.
    Because every server's share depends on the total weight, a change of
    membership re-counts every server's digests: with unequal weights, other
    servers gain or lose a few points too (libketama rebuilds its continuum).
    """

    points_per_label = 4

    def __init__(self, nodes: Iterable[str] | Mapping[str, int] = ()) -> None:
        super().__init__(nodes, vnodes=KETAMA_LABELS, hash_function=ketama_hash)

    def _label_counts(self, nodes: Iterable[str]) -> dict[str, int]:
        """Every node's digest count, whichever `nodes` changed: each share
        depends on the total weight and on the number of servers."""
        total = np.float32(sum(self._weights.values()))
        servers = len(self._weights)
        counts = {}
        for node, weight in self._weights.items():
            share = np.float32(weight) / total  # C: (float)memory / (float)total
            # C: floorf(pct * 40.0 * (float)numservers). The product is exact in
            # double; passing it to floorf rounds it to float first.
            counts[node] = int(np.floor(np.float32(float(share) * KETAMA_LABELS * servers)))
        return counts

    def _label_positions(self, node: str, indexes: range) -> list[int]:
        positions = []
        for k in indexes:
            digest = hashlib.md5(f"{node}-{k}".encode()).digest()
            positions += (int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))
        return positions

    def _check_weight(self, node: str, weight: object) -> None:
        check_weight(node, weight)
        if not isinstance(weight, numbers.Integral) or weight > KETAMA_MAX_WEIGHT:
            raise InvalidWeightError(
                f"ketama weights are whole numbers from 1 to {KETAMA_MAX_WEIGHT:,} "
                f"(libketama reads memory sizes), got {weight!r} for {node!r}"
            )
