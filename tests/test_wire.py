"""zcell._wire: the frame format, as a specification (docs/protocol.md). Pure: no sockets.

Every message is one msgpack array ``[version, kind, ...fields]``. ``Codec.decode``
turns any byte string into either a well-formed message or ``ProtocolError``;
``Codec.encode`` refuses, with ``SerializationError``, what cannot travel.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcell import _wire as wire
from zcell._wire import (
    CTRL,
    DECLINED,
    DIRECTORY,
    ERROR,
    F_EMIT,
    F_NOWAIT,
    F_THROW,
    HEARTBEAT,
    HELLO,
    LEAVING,
    LEFT,
    OK,
    REP,
    REQ,
    SCATTER,
    WELCOME,
    ZERROR,
    Codec,
)
from zcell.errors import ProtocolError, SerializationError

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: For the structure-aware fuzzers, whose examples cost more to generate.
FUZZ_LIGHT = settings(FUZZ, max_examples=150)

# -- realistic values, shaped like what zcell._mesh.node and zcell.actors.hosting send ---------------

V = wire.PROTOCOL_VERSION
NODE = "3f2a9c0d1e4b5a67"  # uuid4().hex[:16]
BOOT = "9b1c2d3e"  # uuid4().hex[:8]
PEER = "77aa01bc99de4f10"
PEER_BOOT = "0c0ffee0"
ACTOR = "5d41402abc4b2a76b9719d911017c592"  # uuid4().hex
OTHER_ACTOR = "7215ee9c7d9dc229d2921a40e899ec5f"
TYPE = "examples.logger.Logger"
CHAIN = 0x5EED1234 << 20
TTL = 4998  # milliseconds left of the caller's deadline


class Ref:
    """Stands in for ActorProxy: anything with ``_zcell_ref()`` travels as a proxy."""

    def __init__(self, actor_id: str, name: str, node_id: str) -> None:
        self.ref = (actor_id, name, node_id)

    def _zcell_ref(self) -> tuple[str, str, str]:
        return self.ref

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def __repr__(self) -> str:
        return f"Ref{self.ref}"


LOGGER = Ref(ACTOR, TYPE, PEER)
ORIGIN = Ref(OTHER_ACTOR, "examples.counter.Counter", NODE)


def info(**extra: Any) -> dict[str, Any]:
    """Node info as in HELLO and WELCOME: the seven required strings, and more."""
    base = {
        "id": NODE,
        "boot": BOOT,
        "name": "build-host-4242",
        "cluster": "zcell",
        "inbox": "tcp://127.0.0.1:41234",
        "pub": "tcp://127.0.0.1:41235",
        "hb": "tcp://127.0.0.1:41236",
    }
    base.update(extra)
    return base


def req(**over: Any) -> list[Any]:
    fields = {
        "rid": 17,
        "src": NODE,
        "boot": BOOT,
        "chain": CHAIN,
        "ttl": TTL,
        "target": ACTOR,
        "method": "log",
        "kwargs": {"msg": "hello"},
        "flags": 0,
        "origin": None,
        "seen": None,
    }
    fields.update(over)
    return [V, REQ, *fields.values()]


def scatter(**over: Any) -> list[Any]:
    msg = req(target=TYPE, rid=18, **over)
    msg[1] = SCATTER
    return msg


#: One realistic message of every kind and every variant the node sends.
SAMPLES: dict[str, list[Any]] = {
    "req-send": req(),
    "req-nowait": req(flags=F_NOWAIT, kwargs={"msg": "fire and forget"}),
    "req-throw": req(flags=F_THROW, seen=[ACTOR]),
    "req-emit": req(flags=F_NOWAIT | F_EMIT, origin=ORIGIN),
    "req-from-handler": req(origin=ORIGIN, kwargs={"reply_to": ORIGIN, "n": [1, 2, 3]}),
    "req-no-deadline": req(ttl=None),
    "req-rich-kwargs": req(
        kwargs={
            "none": None,
            "flag": True,
            "big": 2**63 - 1,
            "small": -(2**63),
            "pi": 3.141592653589793,
            "inf": float("-inf"),
            "text": "grüße, 世界",
            "blob": b"\x00\xff\x80",
            "nested": {"a": [{"b": [None, False]}], "c": {}},
        }
    ),
    "scatter": scatter(),
    "scatter-nowait": scatter(flags=F_NOWAIT, origin=ORIGIN),
    "rep-ok": [V, REP, 17, PEER, OK, 3],
    "rep-ok-none": [V, REP, 17, PEER, OK, None],
    "rep-ok-proxy": [V, REP, 17, PEER, OK, LOGGER],
    "rep-error": [
        V,
        REP,
        17,
        PEER,
        ERROR,
        [
            "json.decoder.JSONDecodeError",
            "Expecting value: line 1 column 1 (char 0)",
            "Traceback (most recent call last):\n  ...\n",
            "ValueError",
        ],
    ],
    "rep-zerror": [V, REP, 17, PEER, ZERROR, ["NoSuchActor", f"no actor {ACTOR} on node n1"]],
    "rep-scatter-ok": [V, REP, 18, PEER, OK, [ACTOR, {"lines": 4}]],
    "rep-scatter-declined": [V, REP, 18, PEER, DECLINED, [ACTOR, None]],
    "rep-without-value": [V, REP, 17, PEER, OK],
    "hello": [V, HELLO, info(types=[TYPE], started=1718000000.25), "9f" * 16, ""],
    "hello-answer": [V, HELLO, info(), "9f" * 16, "3c" * 16],
    "welcome": [
        V,
        WELCOME,
        info(types=[TYPE], started=1718000000.25),
        12,
        [[ACTOR, TYPE], [OTHER_ACTOR, "examples.counter.Counter"]],
        [info(id=PEER, boot=PEER_BOOT, name="other-1", inbox="tcp://10.0.0.7:5555")],
        "3c" * 16,
    ],
    "welcome-empty": [V, WELCOME, info(), 0, [], [], ""],
    "welcome-news": [V, WELCOME, info(), 3, None, [info(id=PEER, boot=PEER_BOOT, name="o")], ""],
    "ctrl-spawn": [
        V,
        CTRL,
        3,
        NODE,
        BOOT,
        5000,
        "spawn",
        {"type": TYPE, "kwargs": {"prefix": "> "}, "id": ACTOR},
    ],
    "ctrl-kill": [V, CTRL, 4, NODE, BOOT, 5000, "kill", {"id": ACTOR}],
    "ctrl-bind": [
        V,
        CTRL,
        5,
        NODE,
        BOOT,
        5000,
        "bind",
        {"source": ACTOR, "target": [OTHER_ACTOR, TYPE, PEER], "kind": "direct"},
    ],
    "ctrl-unbind-type": [
        V,
        CTRL,
        6,
        NODE,
        BOOT,
        5000,
        "unbind",
        {"source": ACTOR, "target": ["", TYPE, ""], "kind": "scatter"},
    ],
    "ctrl-snapshot": [V, CTRL, 7, NODE, BOOT, 5000, "snapshot", {}],
    "ctrl-no-deadline": [V, CTRL, 8, NODE, BOOT, None, "snapshot", {}],
    "heartbeat": [V, HEARTBEAT, NODE, BOOT, 12, 3, 40],
    "directory-add": [V, DIRECTORY, NODE, BOOT, 13, "+", [ACTOR, TYPE]],
    "directory-remove": [V, DIRECTORY, NODE, BOOT, 14, "-", [ACTOR, TYPE]],
    "leaving": [V, LEAVING, NODE, BOOT],
    "left": [V, LEFT, NODE, BOOT],
}


def as_sent(value: Any, proxy: Callable[[str, str, str], Any] = Ref) -> Any:
    """What the receiver gets for ``value``: tuples become lists, proxies via ``proxy``."""
    if isinstance(value, Ref):
        return proxy(*value.ref)
    if isinstance(value, list | tuple):
        return [as_sent(v, proxy) for v in value]
    if isinstance(value, dict):
        return {k: as_sent(v, proxy) for k, v in value.items()}
    return value


def assert_same(got: Any, want: Any) -> None:
    """Equal, and of the same types all the way down (``True == 1`` is not enough)."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, list | tuple):
        assert len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert list(got) == list(want), (got, want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, float):
        assert got == want and math.copysign(1, got) == math.copysign(1, want)
    else:
        assert got == want


def packb(value: Any) -> bytes:
    """Plain msgpack, bypassing the codec (which would refuse some shapes)."""
    return msgpack.packb(value, use_bin_type=True)


# -- the constants are the protocol ------------------------------------------------------


def test_the_protocol_numbers_are_pinned() -> None:
    # Changing any of these is a new protocol version.
    assert wire.PROTOCOL_VERSION == 2
    assert wire.EXT_PROXY == 1
    assert (REQ, REP, HELLO, WELCOME, CTRL, SCATTER, HEARTBEAT, DIRECTORY, LEAVING, LEFT) == (
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
    )
    assert (F_NOWAIT, F_THROW, F_EMIT) == (1, 2, 4)
    assert (OK, ERROR, ZERROR, DECLINED) == (0, 1, 2, 3)


def test_the_field_positions_are_pinned() -> None:
    assert (
        wire.R_ID,
        wire.R_SRC,
        wire.R_BOOT,
        wire.R_CHAIN,
        wire.R_TTL,
        wire.R_TARGET,
        wire.R_METHOD,
        wire.R_KWARGS,
        wire.R_FLAGS,
        wire.R_ORIGIN,
        wire.R_SEEN,
    ) == tuple(range(2, 13))
    assert (wire.P_ID, wire.P_SRC, wire.P_STATUS, wire.P_VALUE) == (2, 3, 4, 5)
    assert (wire.C_ID, wire.C_SRC, wire.C_BOOT, wire.C_TTL, wire.C_OP, wire.C_ARGS) == tuple(
        range(2, 8)
    )
    assert wire.DEFAULT_MAX_MESSAGE_SIZE == 64 * 1024 * 1024


def test_every_kind_has_a_sample() -> None:
    kinds = {msg[1] for msg in SAMPLES.values()}
    assert kinds == {REQ, REP, HELLO, WELCOME, CTRL, SCATTER, HEARTBEAT, DIRECTORY, LEAVING, LEFT}


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_every_message_kind_round_trips(name: str) -> None:
    codec = Codec(make_proxy=Ref)
    msg = SAMPLES[name]
    assert_same(codec.decode(codec.encode(msg)), as_sent(msg))


def has_proxy(value: Any) -> bool:
    if isinstance(value, Ref):
        return True
    if isinstance(value, list | tuple):
        return any(has_proxy(v) for v in value)
    if isinstance(value, dict):
        return any(has_proxy(v) for v in value.values())
    return False


@pytest.mark.parametrize("name", [n for n, m in SAMPLES.items() if not has_proxy(m)])
def test_a_frame_is_plain_msgpack_that_any_implementation_can_read(name: str) -> None:
    msg = SAMPLES[name]
    frame = Codec().encode(msg)
    assert frame == packb(msg)
    assert_same(msgpack.unpackb(frame, raw=False), as_sent(msg))


def test_the_proxies_a_codec_remembers_are_bounded_and_each_decodes_as_sent() -> None:
    """Proxies are packed and checked once, then remembered: a stream of distinct
    ones (a stranger's, or a huge mesh's) must not grow a node's memory, and
    each must still come out as it went in, across the point where the codec
    starts over."""
    from zcell._wire import codec as codec_module

    codec = Codec(make_proxy=Ref)
    bound = codec_module.PROXY_CACHE
    for i in range(3 * bound + 7):
        ref = Ref(f"a{i:x}", TYPE, PEER)
        msg = codec.decode(codec.encode(req(kwargs={"to": ref, "again": [ref, ref]})))
        assert msg[wire.R_KWARGS] == {"to": ref, "again": [ref, ref]}
        assert len(codec._proxies) <= bound
        assert len(codec_module._packed_proxies) <= bound


def test_a_malformed_proxy_is_refused_each_time_it_comes() -> None:
    codec = Codec(make_proxy=Ref)
    bad = packb(req(kwargs={"to": msgpack.ExtType(1, packb(["only", "two"]))}))
    for _ in range(2):
        with pytest.raises(ProtocolError, match="malformed actor proxy"):
            codec.decode(bad)


def test_str_and_bytes_keep_their_msgpack_types() -> None:
    codec = Codec()
    msg = codec.decode(codec.encode(req(kwargs={"s": "text", "b": b"text"})))
    assert_same(msg[wire.R_KWARGS], {"s": "text", "b": b"text"})


def test_tuples_arrive_as_lists() -> None:
    codec = Codec()
    msg = codec.decode(codec.encode(req(kwargs={"point": (1, (2, 3))})))
    assert_same(msg[wire.R_KWARGS]["point"], [1, [2, 3]])


def test_a_heartbeat_packed_without_the_codec_decodes() -> None:
    # The heartbeat thread packs with msgpack.packb() and no shared Packer.
    frame = msgpack.packb([V, HEARTBEAT, NODE, BOOT, 12, 3, 40])
    assert Codec().decode(frame) == [V, HEARTBEAT, NODE, BOOT, 12, 3, 40]


# A value msgpack can carry, as a caller would pass it.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
kwargs_st = st.dictionaries(st.text(max_size=12), values, max_size=5)
ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)
refs = st.builds(Ref, ids, st.text(max_size=30), ids)
requests = st.builds(
    req,
    rid=st.integers(min_value=0, max_value=2**63 - 1),
    src=ids,
    boot=ids,
    chain=st.integers(min_value=0, max_value=2**63 - 1),
    ttl=st.none() | st.integers(min_value=0, max_value=2**31),
    target=ids,
    method=st.text(max_size=20),
    kwargs=kwargs_st,
    flags=st.integers(min_value=0, max_value=7),
    origin=st.none() | refs,
    seen=st.none() | st.lists(ids, max_size=4),
)


@FUZZ
@given(requests)
def test_any_msgpack_kwargs_round_trip_inside_a_request(msg: list[Any]) -> None:
    codec = Codec(make_proxy=Ref)
    assert_same(codec.decode(codec.encode(msg)), as_sent(msg))


@FUZZ
@given(st.sampled_from([REQ, SCATTER]), kwargs_st)
def test_any_msgpack_kwargs_round_trip_through_a_codec_without_proxy_factory(
    kind: int, kwargs: dict[str, Any]
) -> None:
    codec = Codec()
    msg = req(kwargs=kwargs)
    msg[1] = kind
    assert_same(codec.decode(codec.encode(msg)), as_sent(msg))


# -- any bytes give a message or a ProtocolError, nothing else ---------------------------

_LENGTHS = {
    REQ: 13,
    SCATTER: 13,
    HELLO: 5,
    WELCOME: 7,
    CTRL: 8,
    HEARTBEAT: 7,
    DIRECTORY: 7,
    LEAVING: 4,
    LEFT: 4,
}
_NODE_KEYS = ("id", "boot", "name", "cluster", "inbox", "pub", "hb")


def _is_int(x: Any) -> bool:
    return type(x) is int


def _is_node_info(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(x.get(k), str) for k in _NODE_KEYS)


def _is_actor_entry(x: Any) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x)


def assert_well_formed(msg: Any) -> None:
    """What the node may rely on in a decoded message (restated from docs/protocol.md)."""
    assert isinstance(msg, list)
    assert msg[0] == wire.PROTOCOL_VERSION
    kind = msg[1]
    assert _is_int(kind)
    if kind == REP:
        assert len(msg) in (5, 6)
        assert _is_int(msg[2]) and isinstance(msg[3], str) and _is_int(msg[4])
        return
    assert len(msg) == _LENGTHS[kind]
    if kind in (REQ, SCATTER):
        rid, src, boot, chain, ttl, target, method, kwargs, flags, _origin, seen = msg[2:]
        assert _is_int(rid) and _is_int(chain) and _is_int(flags)
        assert isinstance(src, str) and isinstance(boot, str)
        assert ttl is None or _is_int(ttl)
        assert isinstance(target, str) and isinstance(method, str)
        assert isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)
        assert seen is None or isinstance(seen, list)
    elif kind == CTRL:
        rid, src, boot, ttl, op, args = msg[2:]
        assert _is_int(rid) and isinstance(src, str) and isinstance(boot, str)
        assert ttl is None or _is_int(ttl)
        assert isinstance(op, str) and isinstance(args, dict)
    elif kind == HELLO:
        assert _is_node_info(msg[2]) and isinstance(msg[3], str) and isinstance(msg[4], str)
    elif kind == WELCOME:
        assert _is_node_info(msg[2]) and _is_int(msg[3]) and isinstance(msg[6], str)
        # nil: news of another member, without the sender's actors
        assert msg[4] is None or isinstance(msg[4], list)
        assert msg[4] is None or all(_is_actor_entry(e) for e in msg[4])
        assert isinstance(msg[5], list) and all(_is_node_info(m) for m in msg[5])
    elif kind == HEARTBEAT:
        assert isinstance(msg[2], str) and isinstance(msg[3], str)
        assert all(_is_int(x) for x in msg[4:])
    elif kind == DIRECTORY:
        assert isinstance(msg[2], str) and isinstance(msg[3], str) and _is_int(msg[4])
        assert msg[5] in ("+", "-") and _is_actor_entry(msg[6])
    else:
        assert isinstance(msg[2], str) and isinstance(msg[3], str)


def decode_or_protocol_error(codec: Codec, data: bytes) -> list[Any] | None:
    """Decode; any exception but ProtocolError fails the test."""
    try:
        msg = codec.decode(data)
    except ProtocolError:
        return None
    assert_well_formed(msg)
    return msg


codecs = st.sampled_from([Codec(make_proxy=Ref), Codec()])
SAMPLE_FRAMES = [Codec().encode(msg) for msg in SAMPLES.values()]
frames = st.sampled_from(SAMPLE_FRAMES)


@FUZZ
@given(codecs, st.binary(max_size=300))
def test_any_bytes_give_a_message_or_a_protocol_error(codec: Codec, data: bytes) -> None:
    decode_or_protocol_error(codec, data)


@pytest.mark.parametrize("frame", SAMPLE_FRAMES, ids=list(SAMPLES))
def test_every_truncation_of_a_valid_frame_is_a_protocol_error(frame: bytes) -> None:
    codec = Codec(make_proxy=Ref)
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            codec.decode(frame[:cut])


@FUZZ
@given(codecs, frames, st.data())
def test_byte_flips_in_a_valid_frame_give_a_message_or_a_protocol_error(
    codec: Codec, frame: bytes, data: st.DataObject
) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
        mutated[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    decode_or_protocol_error(codec, bytes(mutated))


@FUZZ
@given(codecs, frames, st.data())
def test_spliced_frames_give_a_message_or_a_protocol_error(
    codec: Codec, frame: bytes, data: st.DataObject
) -> None:
    i = data.draw(st.integers(min_value=0, max_value=len(frame)))
    j = data.draw(st.integers(min_value=i, max_value=len(frame)))
    insert = data.draw(st.binary(max_size=8) | st.sampled_from(SAMPLE_FRAMES))
    decode_or_protocol_error(codec, frame[:i] + insert + frame[j:])


# Valid msgpack of any shape, extension types (any code, any payload) included.
any_ext = st.builds(
    lambda code, payload: msgpack.ExtType(code, payload),
    st.integers(min_value=0, max_value=127),
    st.binary(max_size=16) | st.builds(packb, st.lists(st.text(max_size=4), max_size=4)),
)
wild = st.recursive(
    scalars | any_ext | refs,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(max_size=6) | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def _pack_wild(value: Any) -> bytes:
    return msgpack.packb(
        value,
        use_bin_type=True,
        default=lambda o: msgpack.ExtType(1, packb(list(o.ref))),
    )


@FUZZ_LIGHT
@given(codecs, wild)
def test_any_msgpack_value_gives_a_message_or_a_protocol_error(codec: Codec, value: Any) -> None:
    decode_or_protocol_error(codec, _pack_wild(value))


@FUZZ_LIGHT
@given(codecs, st.sampled_from(list(SAMPLES.values())), st.data())
def test_a_valid_message_with_any_field_replaced_gives_a_message_or_a_protocol_error(
    codec: Codec, msg: list[Any], data: st.DataObject
) -> None:
    mutated = list(msg)
    action = data.draw(st.sampled_from(["replace", "append", "drop"]))
    if action == "replace":
        mutated[data.draw(st.integers(min_value=0, max_value=len(msg) - 1))] = data.draw(wild)
    elif action == "append":
        mutated.append(data.draw(wild))
    else:
        del mutated[data.draw(st.integers(min_value=0, max_value=len(msg) - 1))]
    decode_or_protocol_error(codec, _pack_wild(mutated))


def test_a_hostile_nesting_depth_is_a_protocol_error() -> None:
    frame = bytes([0x9D, V, REQ]) + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        Codec().decode(frame)


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    return depth


def test_whatever_encode_accepts_decode_accepts_at_the_nesting_limit() -> None:
    # Otherwise a sender could send what every receiver drops as a bad frame.
    codec = Codec()
    value: Any = None
    while True:  # the deepest kwargs value the encoder takes
        deeper = [value]
        try:
            codec.encode(req(kwargs={"v": deeper}))
        except SerializationError:
            break
        value = deeper
    assert _depth(value) > 500
    decoded = codec.decode(codec.encode(req(kwargs={"v": value})))
    assert _depth(decoded[wire.R_KWARGS]["v"]) == _depth(value)


# -- wrong shapes: valid msgpack, not a zcell message -----------------------------------


def replace(name: str, index: int, value: Any) -> list[Any]:
    msg = list(SAMPLES[name])
    msg[index] = value
    return msg


def with_info(name: str, index: int, **changes: Any) -> list[Any]:
    node_info = {k: v for k, v in info().items() if k not in changes}
    node_info.update({k: v for k, v in changes.items() if v is not _DROP})
    return replace(name, index, node_info)


_DROP = object()


def raw_ext(code: int, payload: bytes) -> bytes:
    """An ext8 item; negative codes too, which msgpack.ExtType refuses to build."""
    return b"\xc7" + bytes([len(payload)]) + struct.pack("b", code) + payload


def req_with_raw_kwarg(item: bytes) -> bytes:
    """A REQ frame whose kwargs are {"x": <item>}, with ``item`` given as raw bytes."""
    head = packb(req(kwargs={"x": None}))
    tail = packb([F_NOWAIT, None, None])[1:]  # flags, origin, seen
    start = head.index(b"\x81\xa1x\xc0")
    return head[:start] + b"\x81\xa1x" + item + tail


def proxy_ext(payload: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(wire.EXT_PROXY, payload)


WRONG: dict[str, Any] = {
    # not an array of at least two items
    "nil": None,
    "int": 1,
    "str": "REQ",
    "bin": b"\x01\x01",
    "map": {"version": 1, "kind": REQ},
    "empty-array": [],
    "one-item": [V],
    "bare-header": [V, REQ],
    # version
    "version-next": replace("heartbeat", 0, V + 1),
    "version-1": replace("heartbeat", 0, 1),  # before the knock (HELLO with a challenge)
    "version-0": replace("heartbeat", 0, 0),
    "version-str": replace("heartbeat", 0, "1"),
    "version-nil": replace("heartbeat", 0, None),
    "version-list": replace("heartbeat", 0, [1]),
    # kind
    "kind-0": replace("leaving", 1, 0),
    "kind-11": replace("leaving", 1, 11),
    "kind-negative": replace("leaving", 1, -1),
    "kind-huge": replace("leaving", 1, 2**64 - 1),
    "kind-str": replace("leaving", 1, "9"),
    "kind-float": replace("leaving", 1, 9.0),
    "kind-bool": replace("leaving", 1, True),
    "kind-nil": replace("leaving", 1, None),
    # REQ
    "req-rid-str": replace("req-send", wire.R_ID, "17"),
    "req-rid-bool": replace("req-send", wire.R_ID, True),
    "req-rid-float": replace("req-send", wire.R_ID, 17.0),
    "req-src-int": replace("req-send", wire.R_SRC, 1),
    "req-src-bin": replace("req-send", wire.R_SRC, NODE.encode()),
    "req-boot-nil": replace("req-send", wire.R_BOOT, None),
    "req-chain-str": replace("req-send", wire.R_CHAIN, "c"),
    "req-ttl-float": replace("req-send", wire.R_TTL, 4.998),
    "req-ttl-str": replace("req-send", wire.R_TTL, "4998"),
    "req-target-nil": replace("req-send", wire.R_TARGET, None),
    "req-method-bin": replace("req-send", wire.R_METHOD, b"log"),
    "req-kwargs-list": replace("req-send", wire.R_KWARGS, [["msg", "hello"]]),
    "req-kwargs-nil": replace("req-send", wire.R_KWARGS, None),
    "req-kwargs-int-key": replace("req-send", wire.R_KWARGS, {1: "hello"}),
    "req-kwargs-bin-key": replace("req-send", wire.R_KWARGS, {b"msg": "hello"}),
    "req-flags-nil": replace("req-send", wire.R_FLAGS, None),
    "req-flags-bool": replace("req-send", wire.R_FLAGS, True),
    "req-seen-str": replace("req-throw", wire.R_SEEN, ACTOR),
    "req-seen-map": replace("req-throw", wire.R_SEEN, {ACTOR: 1}),
    "req-short": SAMPLES["req-send"][:-1],
    "req-long": [*SAMPLES["req-send"], None],
    # SCATTER
    "scatter-rid-nil": replace("scatter", wire.R_ID, None),
    "scatter-target-int": replace("scatter", wire.R_TARGET, 7),
    "scatter-kwargs-str": replace("scatter", wire.R_KWARGS, "msg=hello"),
    "scatter-short": SAMPLES["scatter"][:12],
    "scatter-long": [*SAMPLES["scatter"], None],
    # REP
    "rep-rid-str": replace("rep-ok", wire.P_ID, "17"),
    "rep-rid-nil": replace("rep-ok", wire.P_ID, None),
    "rep-src-nil": replace("rep-ok", wire.P_SRC, None),
    "rep-src-bin": replace("rep-ok", wire.P_SRC, PEER.encode()),
    "rep-status-str": replace("rep-ok", wire.P_STATUS, "0"),
    "rep-status-bool": replace("rep-ok", wire.P_STATUS, False),
    "rep-short": SAMPLES["rep-ok"][:4],
    "rep-long": [*SAMPLES["rep-ok"], None],
    # HELLO
    "hello-info-list": replace("hello", 2, list(info().items())),
    "hello-info-nil": replace("hello", 2, None),
    "hello-info-no-hb": with_info("hello", 2, hb=_DROP),
    "hello-info-int-inbox": with_info("hello", 2, inbox=41234),
    "hello-info-nil-boot": with_info("hello", 2, boot=None),
    "hello-beat-zero": with_info("hello", 2, beat=0),
    "hello-beat-negative": with_info("hello", 2, beat=-1.0),
    "hello-beat-str": with_info("hello", 2, beat="1.0"),
    "hello-beat-bool": with_info("hello", 2, beat=True),
    "hello-beat-huge": with_info("hello", 2, beat=wire.MAX_BEAT * 2),
    "hello-long": [*SAMPLES["hello"], None],
    "hello-short": SAMPLES["hello"][:4],
    "hello-nonce-nil": replace("hello", 3, None),
    "hello-echo-bin": replace("hello", 4, b"3c"),
    # WELCOME
    "welcome-info-bad": with_info("welcome", 2, cluster=_DROP),
    "welcome-seq-str": replace("welcome", 3, "12"),
    "welcome-seq-bool": replace("welcome", 3, True),
    "welcome-actors-map": replace("welcome", 4, {ACTOR: TYPE}),
    "welcome-actor-short": replace("welcome", 4, [[ACTOR]]),
    "welcome-actor-long": replace("welcome", 4, [[ACTOR, TYPE, PEER]]),
    "welcome-actor-int": replace("welcome", 4, [[1, TYPE]]),
    "welcome-actor-str": replace("welcome", 4, [ACTOR]),
    "welcome-members-map": replace("welcome", 5, {"m": info()}),
    "welcome-member-list": replace("welcome", 5, [list(info().values())]),
    "welcome-member-no-pub": replace("welcome", 5, [{**info(), "pub": None}]),
    "welcome-short": SAMPLES["welcome"][:6],
    "welcome-echo-nil": replace("welcome", 6, None),
    # CTRL
    "ctrl-rid-str": replace("ctrl-kill", wire.C_ID, "4"),
    "ctrl-src-nil": replace("ctrl-kill", wire.C_SRC, None),
    "ctrl-boot-int": replace("ctrl-kill", wire.C_BOOT, 1),
    "ctrl-ttl-float": replace("ctrl-kill", wire.C_TTL, 5.0),
    "ctrl-op-int": replace("ctrl-kill", wire.C_OP, 2),
    "ctrl-op-bin": replace("ctrl-kill", wire.C_OP, b"kill"),
    "ctrl-args-list": replace("ctrl-kill", wire.C_ARGS, [ACTOR]),
    "ctrl-args-nil": replace("ctrl-kill", wire.C_ARGS, None),
    "ctrl-short": SAMPLES["ctrl-kill"][:7],
    "ctrl-long": [*SAMPLES["ctrl-kill"], None],
    # HEARTBEAT
    "heartbeat-id-int": replace("heartbeat", 2, 1),
    "heartbeat-boot-nil": replace("heartbeat", 3, None),
    "heartbeat-seq-str": replace("heartbeat", 4, "12"),
    "heartbeat-load-float": replace("heartbeat", 5, 3.0),
    "heartbeat-actors-nil": replace("heartbeat", 6, None),
    "heartbeat-short": SAMPLES["heartbeat"][:6],
    "heartbeat-long": [*SAMPLES["heartbeat"], 0],
    # DIRECTORY
    "directory-id-nil": replace("directory-add", 2, None),
    "directory-boot-int": replace("directory-add", 3, 7),
    "directory-seq-str": replace("directory-add", 4, "13"),
    "directory-op-star": replace("directory-add", 5, "*"),
    "directory-op-nil": replace("directory-add", 5, None),
    "directory-op-bin": replace("directory-add", 5, b"+"),
    "directory-entry-str": replace("directory-add", 6, ACTOR),
    "directory-entry-short": replace("directory-add", 6, [ACTOR]),
    "directory-entry-int": replace("directory-add", 6, [ACTOR, 1]),
    "directory-short": SAMPLES["directory-add"][:6],
    "directory-long": [*SAMPLES["directory-add"], None],
    # LEAVING, LEFT
    "leaving-id-int": replace("leaving", 2, 1),
    "leaving-boot-nil": replace("leaving", 3, None),
    "leaving-short": SAMPLES["leaving"][:3],
    "left-long": [*SAMPLES["left"], None],
    "left-id-bin": replace("left", 2, NODE.encode()),
    # extension types: only EXT_PROXY, and only a well-formed one
    "ext-0": req(kwargs={"x": msgpack.ExtType(0, b"")}),
    "ext-2": req(kwargs={"x": msgpack.ExtType(2, packb([ACTOR, TYPE, PEER]))}),
    "ext-127": req(origin=msgpack.ExtType(127, b"\x00" * 8)),
    "proxy-not-msgpack": req(origin=proxy_ext(b"\xc1")),
    "proxy-empty": req(origin=proxy_ext(b"")),
    "proxy-str": req(origin=proxy_ext(packb(ACTOR))),
    "proxy-map": req(origin=proxy_ext(packb({"id": ACTOR, "name": TYPE, "node": PEER}))),
    "proxy-two": req(origin=proxy_ext(packb([ACTOR, TYPE]))),
    "proxy-four": req(origin=proxy_ext(packb([ACTOR, TYPE, PEER, PEER]))),
    "proxy-int": req(origin=proxy_ext(packb([ACTOR, TYPE, 7]))),
    "proxy-bin": req(origin=proxy_ext(packb([ACTOR.encode(), TYPE, PEER]))),
    "proxy-trailing": req(origin=proxy_ext(packb([ACTOR, TYPE, PEER]) + b"\xc0")),
    "proxy-nested": req(origin=proxy_ext(packb([proxy_ext(b""), TYPE, PEER]))),
    "proxy-in-kwargs": req(kwargs={"to": proxy_ext(packb([ACTOR, None, PEER]))}),
}
RAW_WRONG: dict[str, bytes] = {
    "ext-negative-2": req_with_raw_kwarg(raw_ext(-2, b"")),
    "ext-negative-128": req_with_raw_kwarg(raw_ext(-128, b"\x00\x01")),
    "timestamp-bad-length": req_with_raw_kwarg(raw_ext(-1, b"\x00\x00")),
    "not-utf8-str": bytes([0x92, V, 0xA1, 0xFF]),
    "reserved-byte": b"\xc1",
    "trailing-data": packb(SAMPLES["leaving"]) + b"\xc0",
    "two-messages": packb(SAMPLES["leaving"]) * 2,
    "empty-frame": b"",
}


@pytest.mark.parametrize("msg", list(WRONG.values()), ids=list(WRONG))
def test_a_wrongly_shaped_message_is_a_protocol_error(msg: Any) -> None:
    for codec in (Codec(), Codec(make_proxy=Ref)):
        with pytest.raises(ProtocolError):
            codec.decode(packb(msg))


@pytest.mark.parametrize("frame", list(RAW_WRONG.values()), ids=list(RAW_WRONG))
def test_a_malformed_frame_is_a_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        Codec().decode(frame)


def test_the_raw_frame_helper_builds_a_valid_request() -> None:
    # So that the RAW_WRONG cases fail for the reason their names give.
    msg = Codec().decode(req_with_raw_kwarg(packb("ok")))
    assert msg == req(kwargs={"x": "ok"}, flags=F_NOWAIT)


@pytest.mark.parametrize(
    "msg",
    [
        req(ttl=None),
        req(ttl=0),
        req(seen=[]),
        req(kwargs={}),
        req(method=""),
        scatter(flags=F_NOWAIT | F_EMIT),
        [V, REP, 1, PEER, DECLINED],
        with_info("hello", 2, extra="ignored", types="not checked"),
        with_info("hello", 2, beat=0.3),
        [V, CTRL, 1, NODE, BOOT, None, "anything", {1: b"keys need not be str"}],
        [V, HEARTBEAT, NODE, BOOT, 0, 0, 0],
    ],
    ids=[
        "ttl-nil",
        "ttl-zero",
        "seen-empty",
        "kwargs-empty",
        "method-empty",
        "scatter-emit",
        "rep-declined-no-value",
        "hello-extra-keys",
        "hello-beat",
        "ctrl-any-args",
        "heartbeat-zeros",
    ],
)
def test_edge_values_the_schema_allows(msg: list[Any]) -> None:
    assert_same(Codec().decode(packb(msg)), msg)


def test_a_directory_type_announcement_as_node_register_sends_it_decodes() -> None:
    msg = [V, DIRECTORY, NODE, BOOT, 15, "t", ["", TYPE]]
    assert Codec().decode(Codec().encode(msg)) == msg


@pytest.mark.parametrize("size", [4, 8, 12])
def test_a_msgpack_timestamp_extension_is_a_protocol_error(size: int) -> None:
    with pytest.raises(ProtocolError):
        Codec().decode(req_with_raw_kwarg(raw_ext(-1, b"\x00" * size)))


@pytest.mark.parametrize("size", [4, 8, 12])
@pytest.mark.parametrize(
    "header",
    [
        lambda n: {4: b"\xd6", 8: b"\xd7"}.get(n, b"\xc7\x0c"),  # fixext (ext 8 for 12)
        lambda n: b"\xc8" + struct.pack(">H", n),  # ext 16
        lambda n: b"\xc9" + struct.pack(">I", n),  # ext 32
    ],
    ids=["fixext", "ext16", "ext32"],
)
def test_a_timestamp_in_any_ext_format_is_a_protocol_error(
    size: int, header: Callable[[int], bytes]
) -> None:
    """The decoder looks for a timestamp only in frames holding one of its headers:
    every format msgpack reads a timestamp from must be among them."""
    item = header(size) + b"\xff" + b"\x00" * size
    assert isinstance(msgpack.unpackb(item), msgpack.Timestamp)
    with pytest.raises(ProtocolError):
        Codec().decode(req_with_raw_kwarg(item))


@pytest.mark.parametrize("seen", [[{}], [[ACTOR]], [1]], ids=["map", "list", "int"])
def test_seen_holds_actor_ids(seen: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        Codec().decode(packb(req(flags=F_THROW, seen=seen)))


@pytest.mark.parametrize("origin", [7, ACTOR, [ACTOR, TYPE, PEER]], ids=["int", "str", "list"])
def test_origin_is_a_proxy_or_nil(origin: Any) -> None:
    with pytest.raises(ProtocolError):
        Codec(make_proxy=Ref).decode(packb(req(origin=origin)))


@pytest.mark.parametrize("version", [True, 1.0], ids=["bool", "float"])
def test_the_version_is_the_integer_1(version: Any) -> None:
    with pytest.raises(ProtocolError):
        Codec().decode(packb(replace("heartbeat", 0, version)))


# -- proxies ------------------------------------------------------------------------------


def test_an_object_with_zcell_ref_travels_as_extension_type_1() -> None:
    frame = Codec().encode(req(origin=LOGGER))
    raw = msgpack.unpackb(frame, raw=False)
    assert raw[wire.R_ORIGIN] == msgpack.ExtType(1, packb([ACTOR, TYPE, PEER]))


def test_a_proxy_decodes_through_make_proxy_to_whatever_it_returns() -> None:
    calls: list[tuple[str, str, str]] = []
    made = object()

    def make_proxy(actor_id: str, name: str, node_id: str) -> object:
        calls.append((actor_id, name, node_id))
        return made

    codec = Codec(make_proxy=make_proxy)
    msg = codec.decode(codec.encode(req(origin=LOGGER)))
    assert msg[wire.R_ORIGIN] is made
    assert calls == [(ACTOR, TYPE, PEER)]


def test_without_make_proxy_a_proxy_decodes_to_a_tuple() -> None:
    codec = Codec()
    msg = codec.decode(codec.encode(req(origin=LOGGER, kwargs={"to": [LOGGER]})))
    assert msg[wire.R_ORIGIN] == (ACTOR, TYPE, PEER)
    assert msg[wire.R_KWARGS] == {"to": [(ACTOR, TYPE, PEER)]}


@pytest.mark.parametrize(
    "msg",
    [
        req(kwargs={"to": LOGGER, "all": [LOGGER, ORIGIN], "by": {"name": {"ref": LOGGER}}}),
        [V, REP, 1, PEER, OK, [LOGGER, {"x": ORIGIN}]],
        [V, REP, 2, PEER, OK, [ACTOR, LOGGER]],
        [V, CTRL, 1, NODE, BOOT, 5000, "spawn", {"type": TYPE, "kwargs": {"peer": LOGGER}}],
    ],
    ids=["kwargs", "reply", "scatter-reply", "spawn-kwargs"],
)
def test_proxies_travel_anywhere_in_a_value(msg: list[Any]) -> None:
    codec = Codec(make_proxy=Ref)
    assert_same(codec.decode(codec.encode(msg)), as_sent(msg))


def test_a_proxy_factory_that_raises_gives_a_protocol_error() -> None:
    def make_proxy(actor_id: str, name: str, node_id: str) -> object:
        raise LookupError("cannot make that proxy")

    codec = Codec(make_proxy=make_proxy)
    with pytest.raises(ProtocolError):
        codec.decode(codec.encode(req(origin=LOGGER)))


# -- what cannot travel --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "advice"),
    [
        ({1, 2}, "a set cannot travel; send a list instead"),
        (frozenset({1}), "a frozenset cannot travel; send a list instead"),
        (object(), "'object'"),
        (Codec, "'type'"),
        (2**64, "outside msgpack's range"),
        (-(2**63) - 1, "outside msgpack's range"),
        ("\ud800", "surrogates not allowed"),
    ],
    ids=["set", "frozenset", "object", "class", "int-too-big", "int-too-small", "surrogate"],
)
def test_a_value_msgpack_cannot_carry_is_a_serialization_error(value: Any, advice: str) -> None:
    with pytest.raises(SerializationError) as caught:
        Codec().encode(req(kwargs={"x": value}))
    assert isinstance(caught.value, TypeError)
    text = str(caught.value)
    assert advice in text
    assert "zcell sends only msgpack types" in text and "actor proxies" in text
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    "value",
    [
        [*[Ref(ACTOR, TYPE, PEER)] * 20, {(1, 2): 3}],
        {"refs": [Ref(ACTOR, TYPE, PEER)] * 3, "when": msgpack.Timestamp(1)},
        [Ref(ACTOR, TYPE, PEER), [msgpack.ExtType(5, b"x")]],
    ],
    ids=["tuple-key-after-20-proxies", "timestamp-beside-proxies", "ext-type-beside-a-proxy"],
)
def test_proxies_beside_what_the_receiver_refuses_do_not_hide_it(value: Any) -> None:
    """The check for what the receiver would refuse skips a proxy once its type
    has been packed; what sits beside proxies is still looked at."""
    codec = Codec(make_proxy=Ref)
    proxies = req(kwargs={"refs": [Ref(ACTOR, TYPE, PEER)] * 20})
    assert_same(codec.decode(codec.encode(proxies)), as_sent(proxies))
    with pytest.raises(SerializationError, match="the receiver would refuse it"):
        codec.encode(req(kwargs={"x": value}))


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1], ids=["too-big", "too-small"])
def test_an_out_of_range_int_is_refused_with_its_range(value: int) -> None:
    with pytest.raises(SerializationError, match="64"):
        Codec().encode(req(kwargs={"x": value}))


def test_a_too_big_message_is_a_serialization_error_saying_what_to_do() -> None:
    codec = Codec(max_message_size=1000)
    with pytest.raises(SerializationError) as caught:
        codec.encode(req(kwargs={"blob": b"x" * 2000}))
    assert isinstance(caught.value, TypeError)
    text = str(caught.value)
    assert "exceeds max_message_size=1000" in text
    assert "send less, or raise Node(max_message_size=...)" in text


def _message_of_size(size: int) -> list[Any]:
    msg = req(kwargs={"blob": b""})
    overhead = len(packb(req(kwargs={"blob": b"x" * 300}))) - 300
    msg[wire.R_KWARGS]["blob"] = b"x" * (size - overhead)
    assert len(packb(msg)) == size
    return msg


def test_a_message_of_exactly_max_message_size_travels() -> None:
    codec = Codec(max_message_size=1000)
    msg = _message_of_size(1000)
    assert codec.decode(codec.encode(msg)) == msg


def test_the_codec_still_works_after_a_failed_encode() -> None:
    codec = Codec()
    for bad in ({1}, object(), 2**64):
        with pytest.raises(SerializationError):
            codec.encode(req(kwargs={"x": [1, 2, bad]}))
        assert codec.encode(SAMPLES["req-send"]) == packb(SAMPLES["req-send"])


def test_a_frame_bigger_than_max_message_size_is_a_protocol_error() -> None:
    codec = Codec(max_message_size=1000)
    with pytest.raises(ProtocolError, match="1001 bytes"):
        codec.decode(packb(_message_of_size(1001)))


def test_a_frame_of_exactly_max_message_size_decodes() -> None:
    msg = _message_of_size(1000)
    assert Codec(max_message_size=1000).decode(packb(msg)) == msg
