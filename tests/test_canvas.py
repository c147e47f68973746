"""The canvas on in-process worker nodes over real sockets: signatures, chains,
groups, chords, map/starmap/chunks, nesting, failures and revoke."""

from __future__ import annotations

from typing import Any

import zcell_test_tasks as t
from conftest import SLOW
from test_tasks_delivery import Workers, workers  # noqa: F401 - the fixture

from zcell import chain, chord, group

T = 10 * SLOW


def test_the_guides_chain_is_64(workers: Workers) -> None:
    workers(1)
    add, mul = t.add, t.mul
    assert chain(add.s(4, 4) | mul.s(8))().get(timeout=T) == 64
    g = chain(add.s(4) | mul.s(8))
    assert g(4).get(timeout=T) == 64
    assert (add.s(4, 4) | mul.s(8))().get(timeout=T) == 64


def test_the_guides_group_and_chord(workers: Workers) -> None:
    workers(2)
    add, xsum = t.add, t.xsum
    assert group(add.s(i, i) for i in range(10))().get(timeout=T) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    g = group(add.s(i) for i in range(10))
    assert g(10).get(timeout=T) == list(range(10, 20))
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=T) == 90
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=T) == 90
