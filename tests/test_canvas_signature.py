"""Signatures as plain data (no worker needed): Celery's shape, partial arguments,
options, the primitives' types, and that any signature survives the wire."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zcell_test_tasks as t
from hypothesis import given
from hypothesis import strategies as st

from zcell import App, ProtocolError, chain, chord, chunks, group, signature
from zcell.tasks import Signature, message, xmap, xstarmap


def roundtrip(value: Any) -> Any:
    """Through msgpack as the wire carries task arguments and messages."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def test_a_signature_is_a_dict_in_celerys_shape() -> None:
    s = t.add.signature((2, 2), countdown=10)
    assert s == {
        "task": "zcell_test_tasks.add",
        "args": [2, 2],
        "kwargs": {},
        "options": {"countdown": 10},
        "subtask_type": None,
        "immutable": False,
    }
    assert repr(t.add.s(2, 2)) == "zcell_test_tasks.add(2, 2)"
    assert t.add.si(2)["immutable"] is True
    assert signature("zcell_test_tasks.add", args=(2, 2), countdown=1).options == {"countdown": 1}


def test_partial_args_are_prepended_and_new_kwargs_win() -> None:
    assert t.add.s(2).clone((8,)).args == [8, 2]
    s3 = t.add.s(2, 2, debug=True)
    assert s3.clone(kwargs={"debug": False}).kwargs == {"debug": False}
    assert s3.kwargs == {"debug": True}  # clone copies
    assert t.add.si(2).clone((8,), {"x": 1}).args == [2]  # immutable ignores partials
    assert t.add.s(2).clone(countdown=3).options == {"countdown": 3}


def test_set_link_and_on_error_add_options() -> None:
    s = t.add.s(1, 1).set(queue="q", countdown=2)
    assert s.options == {"queue": "q", "countdown": 2}
    callback = t.mul.s(2)
    assert s.link(callback) is callback
    errback = t.noted.s()
    assert s.on_error(errback) is errback
    assert s.options["link"] == [callback] and s.options["link_error"] == [errback]
    assert s.set(immutable=True).immutable


def test_calling_a_signature_runs_the_task_here_with_the_partial_args() -> None:
    assert t.add.s(2)(3) == 5


def test_the_pipe_makes_chains_and_a_group_piped_to_a_task_makes_a_chord() -> None:
    c = t.add.s(4, 4) | t.mul.s(8)
    assert isinstance(c, chain) and [s.task for s in c.tasks] == [
        "zcell_test_tasks.add", "zcell_test_tasks.mul",
    ]  # fmt: skip
    assert len((c | t.add.s(1)).tasks) == 3
    assert len((t.add.s(1) | c).tasks) == 3
    steps = (group(t.add.s(i, i) for i in range(3)) | t.xsum.s()).steps()
    assert len(steps) == 1 and isinstance(steps[0], chord)


@pytest.mark.parametrize(
    "canvas",
    [
        chain(t.add.s(1, 1), t.mul.s(2)),
        group(t.add.s(1, 1), chain(t.add.s(2, 2), t.mul.s(3))),
        chord([t.add.s(i, i) for i in range(3)], t.xsum.s()),
        t.add.chunks([(1, 2), (3, 4)], 1),
        t.add.starmap([(1, 2)]),
        t.xsum.map([[1, 2]]),
    ],
)
def test_every_primitive_survives_the_wire_and_comes_back_as_its_class(canvas: Any) -> None:
    back = Signature.from_dict(roundtrip(canvas))
    assert back == canvas
    assert type(back) is type(canvas)
    assert isinstance(back, chain | group | chord | chunks | xmap | xstarmap)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(
    name=st.text(min_size=1, max_size=30),
    args=st.lists(msgpack_values, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=8), msgpack_values, max_size=4),
    options=st.dictionaries(st.sampled_from(["queue", "countdown", "task_id"]), msgpack_values),
    immutable=st.booleans(),
)
def test_any_signature_survives_encode_and_decode(
    name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any], immutable: bool
) -> None:
    sig = signature(name, args=args, kwargs=kwargs, **options).set(immutable=immutable)
    back = Signature.from_dict(roundtrip(sig))
    assert back == sig and back.task == name and back.immutable == immutable


def test_a_task_message_with_a_malformed_chain_is_a_protocol_error() -> None:
    msg = message.make(id="x", name="n", args=[], kwargs={}, queue="celery", reply_to=t.add)
    msg["reply_to"] = type("Agent", (), {"send": None})()
    message.check(msg)
    msg["chain"] = ["not a signature"]
    with pytest.raises(ProtocolError, match="chain"):
        message.check(msg)
    msg["chain"], msg["chord"] = None, "nope"
    with pytest.raises(ProtocolError, match="chord"):
        message.check(msg)


def test_a_signature_nobody_registered_says_how_to_bind_it() -> None:
    apps = [App("one"), App("two")]  # several live apps, none with the task
    with pytest.raises(TypeError, match="app.signature"):
        signature("nobody.has.this").app  # noqa: B018
    assert signature("nobody.has.this", app=apps[0]).app is apps[0]
