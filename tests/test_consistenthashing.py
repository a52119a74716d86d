"""ConsistentHashing: what moves (exactly), balance, weights, replicas, determinism, errors."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import mmh3
import numpy as np
import pytest
from conftest import ROOT, child_env, load_module, run_script
from hypothesis import given, settings
from hypothesis import strategies as st
from uhashring import HashRing

FOLDER = "ConsistentHashing"
ring_module = load_module(FOLDER, "ConsistentHashRing")
strategies = load_module(FOLDER, "strategies")
simulate = load_module(FOLDER, "simulate_resharding")

ConsistentHashRing = ring_module.ConsistentHashRing
RendezvousHashing = strategies.RendezvousHashing
JumpHashing = strategies.JumpHashing
BoundedLoadHashing = strategies.BoundedLoadHashing
ModuloHashing = strategies.ModuloHashing

KEYS = [f"key-{i}" for i in range(10_000)]
NODES = [f"node-{i:03d}" for i in range(100)]

# Hypothesis: few examples each (the properties are checked key by key on
# hundreds of keys per example) and no deadline, so a busy machine never flakes.
PROPERTY = settings(max_examples=25, deadline=None)
node_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
node_sets = st.lists(node_names, min_size=2, max_size=20, unique=True)
SAMPLE_KEYS = [f"k{i}" for i in range(600)]


def placement(strategy, keys=KEYS) -> dict[str, str]:
    return {key: strategy.get_node(key) for key in keys}


def assert_removal_moves_exactly_their_keys(before, after, removed):
    """Every key of a removed node moved; no other key did."""
    for key, node in before.items():
        if node in removed:
            assert after[key] not in removed, f"{key} stayed on removed {node}"
        else:
            assert after[key] == node, f"{key} moved from surviving {node} to {after[key]}"


def assert_addition_moves_only_to_new_nodes(before, after, added):
    for key, node in after.items():
        if node != before[key]:
            assert node in added, f"{key} moved from {before[key]} to old node {node}"


# -- the ring: exact movement, key by key ------------------------------------------


def test_removing_nodes_moves_exactly_the_keys_they_held():
    ring = ConsistentHashRing(NODES)
    before = placement(ring)
    removed = set(random.Random(1).sample(NODES, 5))
    for node in removed:
        ring.remove_node(node)
    after = placement(ring)
    assert_removal_moves_exactly_their_keys(before, after, removed)
    moved = sum(before[k] != after[k] for k in KEYS)
    assert moved == sum(node in removed for node in before.values()) > 0


def test_adding_nodes_moves_only_keys_that_now_belong_to_them():
    ring = ConsistentHashRing(NODES)
    before = placement(ring)
    added = {f"new-{i}" for i in range(5)}
    for node in added:
        ring.add_node(node)
    after = placement(ring)
    assert_addition_moves_only_to_new_nodes(before, after, added)
    assert sum(node in added for node in after.values()) > 0


def test_a_ring_depends_only_on_its_nodes_not_on_the_order_they_came():
    grown = ConsistentHashRing()
    for node in reversed(NODES[:30]):
        grown.add_node(node)
    built = ConsistentHashRing(NODES[:30])
    shrunk = ConsistentHashRing(NODES[:40])
    for node in NODES[30:40]:
        shrunk.remove_node(node)
    assert grown._positions == built._positions == shrunk._positions
    assert grown._owners == built._owners == shrunk._owners
    assert placement(grown, KEYS[:2000]) == placement(built, KEYS[:2000])


@PROPERTY
@given(nodes=node_sets, data=st.data())
def test_ring_movement_is_minimal_for_any_node_set(nodes, data):
    leaving = set(data.draw(st.lists(st.sampled_from(nodes), max_size=len(nodes) - 1, unique=True)))
    joining = data.draw(st.lists(node_names.filter(lambda n: n not in nodes), unique=True))
    ring = ConsistentHashRing(nodes, vnodes=20)
    before = placement(ring, SAMPLE_KEYS)
    for node in leaving:
        ring.remove_node(node)
    middle = placement(ring, SAMPLE_KEYS)
    assert_removal_moves_exactly_their_keys(before, middle, leaving)
    for node in joining:
        ring.add_node(node)
    after = placement(ring, SAMPLE_KEYS)
    assert_addition_moves_only_to_new_nodes(middle, after, set(joining))
    assert ring._positions == ConsistentHashRing(ring.nodes, vnodes=20)._positions


def md5_int(value: str | bytes) -> int:
    """uhashring's default hash: the md5 digest of str(key), as a 128-bit int."""
    return int(hashlib.md5(str(value).encode()).hexdigest(), 16)


def test_the_ring_agrees_with_uhashring_given_its_hash_and_labels(monkeypatch):
    # An independent implementation: uhashring labels virtual nodes "node-i" and
    # hashes them and the keys with md5. Configured the same way, our ring must
    # place every key where uhashring does, before and after changes.
    monkeypatch.setattr(ring_module, "vnode_label", lambda node, index: f"{node}-{index}")
    ours = ConsistentHashRing(NODES[:20], vnodes=160, hash_function=md5_int)
    theirs = HashRing(nodes=NODES[:20], vnodes=160)
    assert placement(ours) == placement(theirs)
    for node in NODES[3:6]:
        ours.remove_node(node)
        theirs.remove_node(node)
    ours.add_node("newcomer")
    theirs.add_node("newcomer")
    assert placement(ours) == placement(theirs)


# -- collisions between virtual nodes -------------------------------------------


def tiny_hash(value: str | bytes) -> int:
    """A 6-bit hash: 64 positions, so virtual nodes collide all the time."""
    return mmh3.hash(value, 0, False) % 64


def test_colliding_virtual_nodes_are_ordered_by_node_name():
    nodes = ["alpha", "bravo", "charlie", "delta"]
    ring = ConsistentHashRing(nodes, vnodes=40, hash_function=tiny_hash)
    pairs = list(zip(ring._positions, ring._owners, strict=False))
    assert len(pairs) == 4 * 40
    assert len(set(ring._positions)) < len(pairs), "the tiny hash must force collisions"
    assert pairs == sorted(pairs)  # ties on position are broken by the smaller name
    for order in (nodes[::-1], nodes[1:] + nodes[:1]):
        other = ConsistentHashRing(vnodes=40, hash_function=tiny_hash)
        for node in order:
            other.add_node(node)
        assert other._owners == ring._owners


def test_a_key_on_a_shared_position_goes_to_the_smaller_name_then_to_the_other():
    labels = {"apple#0": 100, "banana#0": 100, "cherry#0": 900, "key": 100}

    def chosen_hash(value: str | bytes) -> int:
        return labels[value]

    ring = ConsistentHashRing(["banana", "cherry", "apple"], vnodes=1, hash_function=chosen_hash)
    assert ring._positions == [100, 100, 900]
    assert ring.get_node("key") == "apple"
    ring.remove_node("apple")
    assert ring.get_node("key") == "banana"
    ring.add_node("apple")
    assert ring.get_node("key") == "apple"


def test_a_real_murmur3_collision_is_resolved_by_node_name_in_any_order():
    # "n16724#0" and "n100940#0" have the same MurmurHash3 (found by a birthday search).
    smaller, larger = "n100940", "n16724"  # ordered as strings
    assert mmh3.hash(f"{smaller}#0") == mmh3.hash(f"{larger}#0")
    rings = []
    for order in ([smaller, larger, "x", "y"], ["y", larger, "x", smaller]):
        ring = ConsistentHashRing(vnodes=1)
        for node in order:
            ring.add_node(node)
        rings.append((ring._positions, ring._owners))
    assert rings[0] == rings[1]
    ring = ConsistentHashRing([larger, smaller, "x", "y"], vnodes=1)
    before = placement(ring)
    assert larger not in before.values()  # it owns the empty arc at the shared position
    ring.remove_node(smaller)  # its whole arc passes to the other node at that position
    after = placement(ring)
    assert_removal_moves_exactly_their_keys(before, after, {smaller})
    assert {after[key] for key, node in before.items() if node == smaller} == {larger}
    ring.add_node(smaller)
    assert placement(ring) == before
    ring.remove_node(larger)
    assert placement(ring) == before


@PROPERTY
@given(nodes=node_sets, data=st.data())
def test_movement_stays_minimal_when_virtual_nodes_collide(nodes, data):
    leaving = set(data.draw(st.lists(st.sampled_from(nodes), max_size=len(nodes) - 1, unique=True)))
    ring = ConsistentHashRing(nodes, vnodes=8, hash_function=tiny_hash)
    before = placement(ring, SAMPLE_KEYS)
    for node in leaving:
        ring.remove_node(node)
    assert_removal_moves_exactly_their_keys(before, placement(ring, SAMPLE_KEYS), leaving)
    for node in sorted(leaving):
        ring.add_node(node)
    assert placement(ring, SAMPLE_KEYS) == before  # same nodes, same ring


# -- replicas and weights ------------------------------------------------------------


def test_get_nodes_returns_n_distinct_nodes_owner_first():
    ring = ConsistentHashRing(NODES[:10])
    for key in KEYS[:500]:
        replicas = ring.get_nodes(key, 3)
        assert len(replicas) == len(set(replicas)) == 3
        assert replicas[0] == ring.get_node(key)
        assert ring.get_nodes(key, 3) == replicas
    assert sorted(ring.get_nodes("any", 10)) == sorted(NODES[:10])


def test_replica_lists_change_only_where_the_changed_node_appears():
    ring = ConsistentHashRing(NODES[:10])
    before = {key: ring.get_nodes(key, 3) for key in KEYS[:2000]}
    ring.add_node("newcomer")
    changed = 0
    for key, old in before.items():
        new = ring.get_nodes(key, 3)
        if "newcomer" in new:
            changed += 1
            assert [n for n in new if n != "newcomer"] == old[:2]
        else:
            assert new == old
    assert changed > 0
    ring.remove_node("newcomer")
    assert {key: ring.get_nodes(key, 3) for key in before} == before


def test_weights_shift_load_in_proportion():
    # Node "heavy" has weight 3 among nine of weight 1: its fair share is 3/12.
    # With 1,000 virtual nodes a unit, a node's share of the circle varies by
    # about 1/sqrt(3000) ~ 2% (relative); 50,000 keys add ~2% more. Tolerance:
    # 10% relative, over 3 standard deviations.
    weights = {f"light-{i}": 1 for i in range(9)} | {"heavy": 3}
    ring = ConsistentHashRing(weights, vnodes=1000)
    assert ring.vnode_count("heavy") == 3000
    counts = Counter(placement(ring, [f"k{i}" for i in range(50_000)]).values())
    total = sum(counts.values())
    for node, weight in weights.items():
        assert counts[node] / total == pytest.approx(weight / 12, rel=0.10), node


def test_fractional_weights_round_the_vnode_count_but_keep_at_least_one():
    ring = ConsistentHashRing({"a": 0.5, "b": 0.001}, vnodes=10)
    assert (ring.vnode_count("a"), ring.vnode_count("b")) == (5, 1)
    assert len(ring._positions) == 6


# -- determinism ------------------------------------------------------------------

PLACEMENT_SCRIPT = """
import json, sys
sys.path.insert(0, "ConsistentHashing")
from ConsistentHashRing import ConsistentHashRing
from strategies import JumpHashing, RendezvousHashing
nodes = [f"node-{i:03d}" for i in range(50)]
keys = [f"key-{i}" for i in range(2000)]
out = {"python_hash": hash("key-0")}
for name, strategy in (("ring", ConsistentHashRing(nodes)), ("jump", JumpHashing(nodes)),
                       ("rendezvous", RendezvousHashing(nodes))):
    out[name] = [strategy.get_node(k) for k in keys]
print(json.dumps(out))
"""


def test_placements_are_identical_in_separate_processes():
    outputs = []
    for seed in ("1", "2"):  # two processes whose str hash() is salted differently
        result = subprocess.run(
            [sys.executable, "-c", PLACEMENT_SCRIPT],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env({"PYTHONHASHSEED": seed}),
        )
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(result.stdout))
    first, second = outputs
    assert first["python_hash"] != second["python_hash"], "hash() would have disagreed"
    nodes = [f"node-{i:03d}" for i in range(50)]
    keys = [f"key-{i}" for i in range(2000)]
    for name, strategy in (
        ("ring", ConsistentHashRing(nodes)),
        ("jump", JumpHashing(nodes)),
        ("rendezvous", RendezvousHashing(nodes)),
    ):
        assert first[name] == second[name] == [strategy.get_node(k) for k in keys], name


# -- the alternatives ------------------------------------------------------------


def test_rendezvous_removal_moves_exactly_the_keys_of_the_removed_nodes():
    rendezvous = RendezvousHashing(NODES[:40])
    before = placement(rendezvous)
    removed = set(random.Random(2).sample(NODES[:40], 3))
    for node in removed:
        rendezvous.remove_node(node)
    after = placement(rendezvous)
    assert_removal_moves_exactly_their_keys(before, after, removed)
    for node in sorted(removed):
        rendezvous.add_node(node)
    assert_addition_moves_only_to_new_nodes(after, placement(rendezvous), removed)
    assert placement(rendezvous) == before


@PROPERTY
@given(nodes=node_sets, data=st.data())
def test_rendezvous_movement_is_minimal_for_any_node_set(nodes, data):
    leaving = set(data.draw(st.lists(st.sampled_from(nodes), max_size=len(nodes) - 1, unique=True)))
    joining = data.draw(st.lists(node_names.filter(lambda n: n not in nodes), unique=True))
    rendezvous = RendezvousHashing(nodes)
    before = placement(rendezvous, SAMPLE_KEYS)
    for node in leaving:
        rendezvous.remove_node(node)
    middle = placement(rendezvous, SAMPLE_KEYS)
    assert_removal_moves_exactly_their_keys(before, middle, leaving)
    for node in joining:
        rendezvous.add_node(node)
    assert_addition_moves_only_to_new_nodes(middle, placement(rendezvous, SAMPLE_KEYS), joining)


def test_rendezvous_replicas_are_the_top_scores_and_the_first_is_the_owner():
    rendezvous = RendezvousHashing(NODES[:10])
    for key in KEYS[:200]:
        replicas = rendezvous.get_nodes(key, 4)
        assert len(set(replicas)) == 4 and replicas[0] == rendezvous.get_node(key)


def test_jump_hash_matches_the_reference_implementation():
    # Buckets for 1..19 buckets, as computed by the paper's C++ code.
    expected = {
        1: [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
        0xDEADBEEF: [0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
        0x0DDC0FFEEBADF00D: [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
    }
    for key, buckets in expected.items():
        assert [strategies.jump_bucket(key, n) for n in range(1, 20)] == buckets
    # (key, buckets, bucket) from the same C++ code, for large bucket counts
    for key, buckets, bucket in [
        (3040900993826735515, 35516, 30516),
        (8204724074003728306, 28307, 8351),
        (17801246309558322749, 54869589, 25290373),
        (3453997556048239312, 1134058979, 657295740),
        (7994251739200048084, 1794764677, 1415084576),
    ]:
        assert strategies.jump_bucket(key, buckets) == bucket


def test_jump_hash_moves_keys_only_into_a_new_last_bucket_or_out_of_a_removed_one():
    jump = JumpHashing(NODES[:50])
    before = placement(jump)
    for node in ("extra-1", "extra-2"):
        jump.add_node(node)
    grown = placement(jump)
    assert_addition_moves_only_to_new_nodes(before, grown, {"extra-1", "extra-2"})
    # the moved share is the new buckets' fair share, 2/52, give or take noise
    assert sum(before[k] != grown[k] for k in KEYS) / len(KEYS) == pytest.approx(2 / 52, abs=0.01)
    for node in ("extra-2", "extra-1", NODES[49]):
        jump.remove_node(node)
    assert_removal_moves_exactly_their_keys(before, placement(jump), {NODES[49]})


@PROPERTY
@given(start=st.integers(1, 60), grow=st.integers(1, 20))
def test_jump_hash_movement_is_minimal_for_any_bucket_count(start, grow):
    names = [f"b{i}" for i in range(start + grow)]
    jump = JumpHashing(names[:start])
    before = placement(jump, SAMPLE_KEYS)
    for name in names[start:]:
        jump.add_node(name)
    after = placement(jump, SAMPLE_KEYS)
    assert_addition_moves_only_to_new_nodes(before, after, set(names[start:]))
    for name in reversed(names[start:]):
        jump.remove_node(name)
    assert placement(jump, SAMPLE_KEYS) == before


def test_jump_hash_refuses_to_remove_a_middle_bucket():
    jump = JumpHashing(["a", "b", "c"])
    with pytest.raises(strategies.UnsupportedChangeError, match="only remove the last bucket"):
        jump.remove_node("b")
    assert jump.nodes == ["a", "b", "c"]


def test_modulo_hashing_moves_most_keys_when_one_node_is_added():
    modulo = ModuloHashing(NODES[:10])
    before = placement(modulo)
    modulo.add_node("eleventh")
    moved = sum(before[k] != modulo.get_node(k) for k in KEYS) / len(KEYS)
    assert moved == pytest.approx(10 / 11, abs=0.02)


# -- bounded loads -------------------------------------------------------------------


def assert_within_cap(bounded):
    cap = bounded.capacity()
    loads = bounded.loads
    assert sum(loads.values()) == len(bounded.placement)
    assert max(loads.values()) <= cap, f"a node holds {max(loads.values())} > cap {cap}"


def test_bounded_loads_cap_is_ceil_c_times_the_mean():
    bounded = BoundedLoadHashing(NODES[:10], c=1.25)
    bounded.add_keys(KEYS[:1000])
    assert bounded.capacity() == 125
    bounded.add_keys(KEYS[1000:1003])
    assert bounded.capacity() == math.ceil(1.25 * 1003 / 10) == 126
    assert BoundedLoadHashing(NODES[:10], c=1.1).capacity(100) == 11  # not 12 (float error)


@PROPERTY
@given(
    nodes=node_sets,
    c=st.sampled_from([1.0, 1.1, 1.25, 1.5, 2.0]),
    vnodes=st.sampled_from([1, 4, 40]),
    data=st.data(),
)
def test_bounded_loads_never_exceeds_its_cap(nodes, c, vnodes, data):
    bounded = BoundedLoadHashing(nodes, c=c, vnodes=vnodes)
    bounded.add_keys(SAMPLE_KEYS[:300])
    assert_within_cap(bounded)
    for key in SAMPLE_KEYS[300:360]:  # one at a time, as a load balancer would
        bounded.get_node(key)
        assert_within_cap(bounded)
    for node in data.draw(st.lists(st.sampled_from(nodes), max_size=len(nodes) - 1, unique=True)):
        bounded.remove_node(node)
        assert_within_cap(bounded)
    for node in data.draw(st.lists(node_names.filter(lambda n: n not in nodes), unique=True)):
        bounded.add_node(node)
        assert_within_cap(bounded)
    # The placement is always the one a fresh start with the same nodes and keys gives.
    fresh = BoundedLoadHashing(bounded.nodes, c=c, vnodes=vnodes)
    fresh.add_keys(bounded.placement)
    assert fresh.placement == bounded.placement


def test_bounded_loads_refuses_a_bad_key_before_placing_any():
    bounded = BoundedLoadHashing(NODES[:4], vnodes=1)
    bounded.add_keys(KEYS[:100])
    placed = bounded.placement
    with pytest.raises(TypeError, match="keys must be str or bytes, got int"):
        bounded.add_keys(["fine", 42, *KEYS[100:200]])
    assert bounded.placement == placed
    assert_within_cap(bounded)


def test_bounded_loads_sends_keys_past_a_full_node_but_only_when_it_is_full():
    # One virtual node each: the plain ring is badly unbalanced, so the cap binds.
    bounded = BoundedLoadHashing(NODES[:20], c=1.25, vnodes=1)
    bounded.add_keys(KEYS)
    ring = ConsistentHashRing(NODES[:20], vnodes=1)
    cap = bounded.capacity()
    skipped = 0
    for key, node in bounded.placement.items():
        home = ring.get_node(key)
        if node != home:  # loads only grow, so a node full then is full now
            skipped += 1
            assert bounded.loads[home] == cap, f"{key} skipped {home}, which had room"
    assert skipped > 0
    assert max(bounded.loads.values()) == cap < max(Counter(placement(ring).values()).values())


# -- errors -------------------------------------------------------------------------------


def test_looking_up_a_key_on_an_empty_ring_raises():
    ring = ConsistentHashRing()
    with pytest.raises(ring_module.EmptyRingError, match="no nodes"):
        ring.get_node("k")
    with pytest.raises(ring_module.EmptyRingError):
        ring.get_nodes("k", 1)
    ring.add_node("only")
    ring.remove_node("only")
    with pytest.raises(LookupError):
        ring.get_node("k")
    for empty in (ModuloHashing(), JumpHashing(), RendezvousHashing()):
        with pytest.raises(ring_module.EmptyRingError):
            empty.get_node("k")


def test_removing_an_unknown_node_raises_and_changes_nothing():
    ring = ConsistentHashRing(["a", "b"])
    positions = list(ring._positions)
    with pytest.raises(ring_module.UnknownNodeError, match="'c' is not on the ring") as error:
        ring.remove_node("c")
    assert isinstance(error.value, KeyError)
    assert ring._positions == positions and ring.nodes == ["a", "b"]
    for other in (ModuloHashing(["a"]), JumpHashing(["a"]), RendezvousHashing(["a"])):
        with pytest.raises(KeyError):
            other.remove_node("c")


def test_adding_a_node_twice_raises():
    ring = ConsistentHashRing(["a"])
    with pytest.raises(ring_module.DuplicateNodeError, match="already on the ring"):
        ring.add_node("a")
    with pytest.raises(ring_module.DuplicateNodeError):
        ConsistentHashRing(["a", "a"])
    with pytest.raises(ValueError):
        RendezvousHashing(["a"]).add_node("a")
    assert len(ring) == 1


@pytest.mark.parametrize("weight", [0, -1, -0.5, float("nan"), float("inf"), "2", True, None])
def test_a_weight_that_is_not_a_positive_number_raises(weight):
    with pytest.raises(ring_module.InvalidWeightError, match="finite number above 0"):
        ConsistentHashRing().add_node("a", weight=weight)


def test_any_positive_real_number_is_a_weight():
    ring = ConsistentHashRing(vnodes=10)
    for node, weight in (("half", Fraction(1, 2)), ("two", 2), ("tiny", 1e-9), ("np", np.int64(3))):
        ring.add_node(node, weight=weight)
    assert [ring.vnode_count(node) for node in ring.nodes] == [5, 20, 1, 30]


def test_other_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="vnodes"):
        ConsistentHashRing(vnodes=0)
    with pytest.raises(TypeError, match="must be str"):
        ConsistentHashRing([1])
    ring = ConsistentHashRing(["a", "b"])
    for n in (0, 3, 1.5, True, "2"):
        with pytest.raises(ValueError, match="whole number between 1 and 2"):
            ring.get_nodes("k", n)
        with pytest.raises(ValueError, match="whole number between 1 and 2"):
            RendezvousHashing(["a", "b"]).get_nodes("k", n)
    for c in (0.9, float("inf"), float("nan"), "2"):
        with pytest.raises(ValueError, match="c must be a finite number >= 1"):
            BoundedLoadHashing(["a"], c=c)
    bounded = BoundedLoadHashing(["a"])
    bounded.add_keys(["k"])
    with pytest.raises(strategies.UnsupportedChangeError, match="last node"):
        bounded.remove_node("a")


def test_keys_and_node_lists_of_the_wrong_type_are_refused_clearly():
    ring = ConsistentHashRing(["a"])
    with pytest.raises(TypeError, match="keys must be str or bytes, got int"):
        ring.get_node(42)
    assert ring.get_node(b"42") == ring.get_node("42") == "a"
    with pytest.raises(TypeError, match="keys must be str or bytes, got int"):
        ring.get_nodes(42, 1)
    with pytest.raises(TypeError, match="list of names"):
        ConsistentHashRing("node-1")  # would otherwise be six one-letter nodes


@pytest.mark.parametrize(
    "strategy", [ModuloHashing, JumpHashing, RendezvousHashing, BoundedLoadHashing]
)
def test_every_strategy_refuses_wrong_types_as_the_ring_does(strategy):
    with pytest.raises(TypeError, match="keys must be str or bytes, got int"):
        strategy(["a"]).get_node(42)
    with pytest.raises(TypeError, match="node names must be str, got int"):
        strategy([1, 2])
    with pytest.raises(TypeError, match="list of names"):
        strategy("node-1")


def test_the_ring_reports_its_nodes():
    ring = ConsistentHashRing({"b": 1, "a": 2}, vnodes=10)
    assert ring.nodes == ["b", "a"] and len(ring) == 2
    assert "a" in ring and "z" not in ring
    assert ring.weight("a") == 2 and len(ring._positions) == 30
    assert "2 nodes, 30 virtual nodes" in repr(ring)


# -- the brief's experiment, as a script ----------------------------------------------------

BRIEF_PLOTS = [
    "initial_distribution_of_10000_keys_across_1000_shards.png",
    "distribution_after_removing_50_shards.png",
    "distribution_after_adding_50_new_shards.png",
]


def test_simulate_resharding_writes_the_three_plots_and_moves_about_five_percent(tmp_path):
    result = run_script(
        f"{FOLDER}/simulate_resharding.py", "--trials", "1", "--out-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BRIEF_PLOTS)
    for name in BRIEF_PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Theory: 50 of 1,000 shards = 5.00% either way. One trial of 10,000 keys
    # varies by ~0.2 points (binomial) plus the removed shards' arc noise:
    # 3.5%-6.5% is over 5 standard deviations wide.
    for change in ("remove 50 shards", "add 50 new shards"):
        match = re.search(
            rf"^{change}\s+([\d.]+)%\s+[\d.]+% - [\d.]+%\s+5\.00%\s+0\s+([\d.]+)%$",
            result.stdout,
            re.MULTILINE,
        )
        assert match, result.stdout
        ring_moved, modulo_moved = float(match[1]), float(match[2])
        assert 3.5 <= ring_moved <= 6.5
        assert modulo_moved >= 80


def test_simulate_resharding_names_plots_after_its_arguments(tmp_path):
    result = run_script(
        f"{FOLDER}/simulate_resharding.py",
        *("--shards", "40", "--keys", "500", "--remove", "4", "--add", "6", "--trials", "2"),
        *("--out-dir", str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "initial_distribution_of_500_keys_across_40_shards.png",
            "distribution_after_removing_4_shards.png",
            "distribution_after_adding_6_new_shards.png",
        ]
    )
    assert "trials done: 2/2" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--remove", "1000"], "--remove must be between 0 and 999"),
        (["--trials", "0"], "--trials must be between 1 and 1,000"),
        (["--hash", "md5"], "invalid choice"),
        (["--out-dir", __file__], "is a file, not a directory"),
        (["--keys", "10000000000"], "--keys must be between 1 and 10,000,000"),
        (["--shards", "50000", "--vnodes", "1000"], "the limit is 10,000,000"),
        (["--save-images", "--shards", "10"], "show the brief's numbers"),
        (["--save-images", "--out-dir", "elsewhere"], "cannot be combined"),
    ],
)
def test_simulate_resharding_rejects_bad_arguments(args, message):
    result = run_script(f"{FOLDER}/simulate_resharding.py", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_experiment_counts_moves_key_by_key():
    trial = simulate.run_trial(shards=200, keys=4000, remove=10, add=10, seed=3)
    assert trial.strays_on_removal == trial.strays_on_addition == 0
    on_removed = sum(node in set(trial.removed) for node in trial.initial.values())
    assert trial.moved_on_removal == on_removed / 4000
    on_new = sum(node in set(trial.added) for node in trial.after_addition.values())
    assert trial.moved_on_addition == on_new / 4000


@pytest.mark.parametrize("script", ["demo.py", "bench.py", "simulate_resharding.py"])
def test_every_script_explains_itself_and_where_its_plots_go(script):
    result = run_script(f"{FOLDER}/{script}", "--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "--save-images" in result.stdout


def test_bench_refuses_a_bad_key_count_at_once():
    result = run_script(f"{FOLDER}/bench.py", "--keys", "99999999999")
    assert result.returncode == 2
    assert "--keys must be between" in result.stderr and "Traceback" not in result.stderr
