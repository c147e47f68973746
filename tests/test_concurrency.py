"""A greenlet per message: nested and re-entrant calls never deadlock."""

from __future__ import annotations

import time

import pytest
from conftest import SLOW
from zcell_test_actors import Echo


@pytest.mark.parametrize("concurrency", [1000, 4])
def test_a_calls_b_which_calls_a_back(mesh, concurrency):
    a, b = mesh(2, actors=[Echo], concurrency=concurrency)
    x = a.spawn(Echo, on="n0")
    y = a.spawn(Echo, on="n1")
    assert x.send.ask_back(other=y, depth=6) == "bottom"


@pytest.mark.parametrize("concurrency", [1000, 4])
def test_an_actor_calls_itself(make_node, concurrency):
    node = make_node(actors=[Echo], concurrency=concurrency)
    ref = node.spawn(Echo)
    assert ref.send.recurse(depth=5) == 5


@pytest.mark.parametrize("concurrency", [1000, 4])
def test_a_recursion_ten_deep_through_the_mesh(mesh, concurrency):
    nodes = mesh(3, actors=[Echo], concurrency=concurrency)
    refs = [nodes[0].spawn(Echo, on=f"n{i % 3}") for i in range(10)]
    # The chain visits 10 actors on 3 nodes and comes back through each.
    assert refs[0].send.chain(refs=refs[1:] + [refs[0]]) == 10
    assert refs[0].send.recurse(depth=10) == 10


def test_the_concurrency_bound_holds_back_new_chains_only(make_node):
    node = make_node(actors=[Echo], concurrency=2)
    ref = node.spawn(Echo)
    started = time.monotonic()
    results = [ref.call.sleep(seconds=0.3) for _ in range(4)]
    assert [r.get(timeout=5 * SLOW) for r in results] == [0.3] * 4
    elapsed = time.monotonic() - started
    # 4 sleeps of 0.3 s, 2 at a time: about 0.6 s, not 0.3 (unbounded) or 1.2 (serial).
    assert 0.55 < elapsed < 1.1


def test_many_concurrent_calls_run_in_parallel_greenlets(make_node):
    node = make_node(actors=[Echo])
    ref = node.spawn(Echo)
    started = time.monotonic()
    results = [ref.call.sleep(seconds=0.3) for _ in range(200)]
    assert all(r.get(timeout=5 * SLOW) == 0.3 for r in results)
    assert time.monotonic() - started < 2.0


def test_direct_messages_from_one_sender_start_in_order(mesh):
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")
    for i in range(200):
        ref.send.echo(value=i, nowait=True)
    # count() queues behind the 200 echoes from the same sender.
    assert ref.send.count() == 200
