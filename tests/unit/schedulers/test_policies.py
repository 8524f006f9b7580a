"""Policies are pure: given a request and a cache view they return a plan; check the plans."""
from __future__ import annotations

import pytest

from edgemoe.errors import ConfigError
from edgemoe.schedulers import make_policy
from edgemoe.schedulers.base import CacheView, LayerRequest, assign_levels, make_room

LADDER = (2, 4, 8)
CHUNKS = (100, 100, 200)          # prefix: 2 -> 100, 4 -> 200, 8 -> 400


def view(levels=None, capacity=1000, heat=None, last_use=None, uses=None, busy=()):
    levels = levels or {}
    used = sum(sum(CHUNKS[: LADDER.index(b) + 1]) for b in levels.values())
    return CacheView(capacity, used, levels, LADDER, CHUNKS, heat or {}, last_use or {}, uses or {},
                     frozenset(busy))


def test_assign_levels_is_bit_first_then_hottest_first():
    keys = [(0, e) for e in range(4)]            # already ordered hottest first
    # 4 experts at level 2 cost 400; then +100 each to level 4: 700 allows 3 upgrades
    got = assign_levels(keys, view(), 700)
    assert got == {(0, 0): 4, (0, 1): 4, (0, 2): 4, (0, 3): 2}
    # too small for everyone at level 2: the hottest get it, the rest 0 (streamed)
    assert assign_levels(keys, view(), 250) == {(0, 0): 2, (0, 1): 2, (0, 2): 0, (0, 3): 0}


def test_make_room_downgrades_before_evicting():
    v = view({(0, 0): 8, (0, 1): 8}, capacity=800)    # used 800, full
    drops, freed = make_room(v, 200, protect=set(), victims=[(0, 0), (0, 1)],
                             targets={(0, 0): 4, (0, 1): 8})
    assert drops == [((0, 0), 4)] and freed == 200
    drops, freed = make_room(v, 500, protect={(0, 1)}, victims=[(0, 0), (0, 1)])
    assert drops == [((0, 0), 0)] and freed == 400   # protected expert is never a victim


def test_lru_evicts_least_recent_and_loads_all_chunks_in_order():
    v = view({(0, 1): 8, (0, 2): 8}, capacity=800, last_use={(0, 1): 5, (0, 2): 3})
    plan = make_policy("lru").plan(LayerRequest(10, 0, ((3, 1),), 8), v)
    assert plan.drops == (((0, 2), 0),)
    assert plan.loads == (((0, 3), 0), ((0, 3), 1), ((0, 3), 2))
    assert plan.compute == ((3, 8),)


def test_lfu_evicts_least_frequent():
    v = view({(0, 1): 8, (0, 2): 8}, capacity=800, uses={(0, 1): 1, (0, 2): 9},
             last_use={(0, 1): 9, (0, 2): 1})
    plan = make_policy("lfu").plan(LayerRequest(10, 0, ((3, 1),), 8), v)
    assert plan.drops == (((0, 1), 0),)


def test_belady_evicts_the_one_used_furthest_ahead():
    future = [(0, 0, (1,)), (1, 0, (2,)), (2, 0, (3,)), (3, 0, (1,))]   # 2 never again after t=1
    pol = make_policy("belady", future=future)
    v = view({}, capacity=800)
    pol.plan(LayerRequest(0, 0, ((1, 1),), 8), v)
    pol.plan(LayerRequest(1, 0, ((2, 1),), 8), view({(0, 1): 8}, capacity=800))
    plan = pol.plan(LayerRequest(2, 0, ((3, 1),), 8), view({(0, 1): 8, (0, 2): 8}, capacity=800))
    assert plan.drops == (((0, 2), 0),)       # 1 comes back at t=3, 2 never does


def test_hebf_orders_lowest_chunk_first_hottest_first_and_hits_first():
    heat = {(0, 1): 1.0, (0, 2): 9.0, (0, 3): 5.0}
    v = view({(0, 3): 8}, capacity=2000, heat=heat)
    plan = make_policy("hebf").plan(LayerRequest(0, 0, ((1, 1), (2, 1), (3, 1)), 8), v)
    assert plan.loads[:2] == (((0, 2), 0), ((0, 1), 0))      # chunk 0 of both, hottest first
    assert [i for _, i in plan.loads] == [0, 0, 1, 1, 2, 2]
    assert plan.compute[0] == (3, 8)                          # the resident one computes first
    assert [e for e, _ in plan.compute[1:]] == [2, 1]


def test_hebf_reads_first_what_most_rows_of_the_step_wait_on():
    """In a batch, "hottest" is the rows routed to an expert in this step; heat breaks ties."""
    heat = {(0, 1): 9.0, (0, 2): 1.0, (0, 3): 5.0}
    plan = make_policy("hebf").plan(LayerRequest(0, 0, ((1, 1), (2, 6), (3, 1)), 8),
                                    view(capacity=2000, heat=heat))
    assert [k for k, i in plan.loads if i == 0] == [(0, 2), (0, 1), (0, 3)]
    assert [e for e, _ in plan.compute] == [2, 1, 3]


def test_hebf_auto_levels_follow_heat_and_respect_room():
    keys = [(0, e) for e in range(4)]
    heat = {(0, 0): 10.0, (0, 1): 1.0, (0, 2): 1.0, (0, 3): 1.0}
    pol = make_policy("hebf", experts=keys)
    # capacity 500 -> targets from 450: all at level 2 (400), no room to climb
    plan = pol.plan(LayerRequest(0, 0, ((0, 1), (1, 1)), None), view(capacity=500, heat=heat))
    assert dict(plan.compute) == {0: 2, 1: 2}
    pol = make_policy("hebf", experts=keys)
    plan = pol.plan(LayerRequest(0, 0, ((0, 1), (1, 1)), None), view(capacity=620, heat=heat))
    assert dict(plan.compute) == {0: 4, 1: 2}                 # the hot one earned a level


def test_static_needs_a_profile_and_belady_a_trace():
    with pytest.raises(ConfigError, match="profile"):
        make_policy("static")
    with pytest.raises(ConfigError, match="trace"):
        make_policy("belady")
    with pytest.raises(ConfigError, match="hebf, lru, lfu, static, belady"):
        make_policy("fifo")


def test_static_levels_are_fixed_by_profile():
    profile = {(0, 0): 100.0, (0, 1): 1.0}
    pol = make_policy("static", profile=profile)
    plan = pol.plan(LayerRequest(0, 0, ((0, 1), (1, 1)), None), view(capacity=400))
    assert dict(plan.compute) == {0: 4, 1: 2}
