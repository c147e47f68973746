"""CURVE encryption and ZAP admission for a cluster secret (see docs/security.md).

With a secret, every member of a cluster derives the same CURVE keypair from it:
scrypt over the secret, salted with the cluster name, gives the 32-byte secret
key. Every TCP socket of the node uses it. Sockets that bind (the ROUTER inbox,
the XPUB, the heartbeat PUB) are CURVE servers with the cluster secret key;
sockets that connect (DEALERs, the SUB) are CURVE clients that expect the
cluster public key from the server and present the same cluster pair
themselves. A peer without the secret cannot complete the handshake, so not one
of its frames reaches the decoder.

On top of that each node answers ZeroMQ's ZAP requests (RFC 27) for its own
context and admits only clients whose long-term public key is the cluster's:
knowing the public key (it is not secret by nature) is not enough to connect.
The handler runs in a greenlet on the node's loop, with the same NOBLOCK +
FD-watcher integration as every other socket (``transport.Socket``); ZAP
requests for the heartbeat PUB, which lives in another thread but in the same
context, reach it too.

This module sits at the transport layer: it touches zmq, never msgpack.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gevent
import zmq
from zmq.utils import z85

from .sockets import Socket, TransportClosed

if TYPE_CHECKING:
    from gevent.hub import Hub

    from .sockets import Context

log = logging.getLogger(__name__)

__all__ = [
    "CLIENT",
    "SERVER",
    "SALT_PREFIX",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "ZAP_ENDPOINT",
    "ClusterKeys",
    "ZapHandler",
    "derive_keys",
    "role_of",
]

# The key derivation. Changing any of these is a wire-incompatible change:
# nodes with the old and the new derivation can no longer talk.
SALT_PREFIX = b"zcell-curve:"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
KEY_BYTES = 32  # a Curve25519 secret key

#: libzmq asks every ZAP question here, in the context of the socket concerned.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"

SERVER = "server"
CLIENT = "client"
# Sockets that bind are servers, sockets that connect are clients.
_ROLES: dict[int, str] = {
    int(zmq.ROUTER): SERVER,
    int(zmq.XPUB): SERVER,
    int(zmq.PUB): SERVER,
    int(zmq.DEALER): CLIENT,
    int(zmq.SUB): CLIENT,
}

# Refused addresses logged at WARNING once each (later ones at DEBUG).
_MAX_LOGGED = 1024


def role_of(kind: int) -> str:
    """The CURVE role of a zcell socket type.

    Raises:
        ValueError: for a socket type zcell does not use over TCP.
    """
    role = _ROLES.get(int(kind))
    if role is None:
        raise ValueError(f"no CURVE role for socket type {kind}")
    return role


@dataclass(frozen=True)
class ClusterKeys:
    """The CURVE keypair every member of one cluster derives from the secret."""

    public: bytes  # z85 (40 bytes)
    secret: bytes = field(repr=False)  # z85 (40 bytes)
    domain: bytes = b""  # the ZAP domain: the cluster name

    @property
    def public_raw(self) -> bytes:
        """The public key as ZAP presents a client's: 32 raw bytes."""
        return z85.decode(self.public)

    def secure(self, sock: zmq.Socket[bytes], kind: int) -> None:
        """Set the CURVE options for ``sock`` according to its type's role.

        Must be called before the socket binds or connects.
        """
        if role_of(kind) == SERVER:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
            # A non-empty domain makes libzmq consult the ZAP handler.
            sock.setsockopt(zmq.ZAP_DOMAIN, self.domain)
        else:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def derive_keys(secret: str, cluster: str) -> ClusterKeys:
    """Derive the cluster's CURVE keypair from ``secret`` (slow by design: do it once).

    ``hashlib.scrypt(secret.encode(), salt=b"zcell-curve:" + cluster.encode(),
    n=2**14, r=8, p=1, dklen=32)`` is the Curve25519 secret key; the public key
    follows from it. The same secret gives different keys in different clusters.

    Raises:
        ValueError: an empty secret.
    """
    if not secret:
        raise ValueError("the cluster secret must not be empty")
    if not zmq.has("curve"):  # pragma: no cover - every pyzmq wheel has it
        raise ValueError("this libzmq has no CURVE support: a secret cannot be used")
    raw = hashlib.scrypt(
        secret.encode("utf-8"),
        salt=SALT_PREFIX + cluster.encode("utf-8"),
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=KEY_BYTES,
    )
    secret_z85 = z85.encode(raw)
    return ClusterKeys(zmq.curve_public(secret_z85), secret_z85, cluster.encode("utf-8"))


class ZapHandler:
    """Answers ZAP requests for one node's context: members in, everyone else out.

    Args:
        ctx: The node's transport context (the handler binds in its zmq context).
        hub: The node's gevent hub; the handler's greenlet runs there.
        keys: The cluster keys: a client must present ``keys.public``.
        stats: The node's counters; each refusal adds one to ``"refused_auth"``.
    """

    def __init__(self, ctx: Context, hub: Hub, keys: ClusterKeys, stats: dict[str, int]) -> None:
        self._ctx = ctx
        self._hub = hub
        self._keys = keys
        self._member_key = keys.public_raw
        self._stats = stats
        self._logged: set[bytes] = set()
        self._sock: Socket | None = None

    def start(self) -> None:
        """Bind the ZAP endpoint and serve from a greenlet (call in the loop thread).

        Start it before the node's server sockets bind: libzmq asks ZAP only if
        a handler is bound when a connection's handshake happens.
        """
        raw = self._ctx.zmq.socket(zmq.ROUTER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.bind(ZAP_ENDPOINT)
        self._sock = Socket(raw, self._hub)
        # The node closes its context's sockets at stop; this one with them.
        self._ctx.sockets.append(self._sock)
        gevent.spawn(self._serve)

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        for frames in sock.recv_loop():
            reply = self.answer(frames)
            if reply is None:
                continue
            try:
                sock.send_multipart(reply)
            except TransportClosed:
                return

    def answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one ZAP request as received by a ROUTER, or None.

        ``frames`` is ``[routing id, b"", version, request id, domain, address,
        identity, mechanism, credentials...]`` (RFC 27). None only when there is
        no envelope to answer on (libzmq never sends such a request).
        """
        if len(frames) < 2 or frames[1] != b"":
            return None
        envelope = frames[:2]
        if len(frames) < 8:
            self._refused(b"?", "malformed ZAP request")
            return [*envelope, ZAP_VERSION, b"", b"400", b"malformed request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = frames[2:8]
        credentials = frames[8:]
        if version != ZAP_VERSION:
            self._refused(address, f"ZAP version {version!r}")
            return [*envelope, ZAP_VERSION, request_id, b"400", b"unknown version", b"", b""]
        if (
            mechanism == b"CURVE"
            and domain == self._keys.domain
            and len(credentials) == 1
            and hmac.compare_digest(credentials[0], self._member_key)
        ):
            return [*envelope, ZAP_VERSION, request_id, b"200", b"OK", b"member", b""]
        self._refused(address, f"{mechanism.decode('ascii', 'replace')} client without the key")
        return [*envelope, ZAP_VERSION, request_id, b"400", b"not a cluster member", b"", b""]

    def _refused(self, address: bytes, why: str) -> None:
        self._stats["refused_auth"] = self._stats.get("refused_auth", 0) + 1
        if address not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(address)
            level = logging.WARNING
        else:
            level = logging.DEBUG
        log.log(
            level,
            "zcell: refused a connection from %s: %s (another secret or cluster?)",
            address.decode("ascii", "replace"),
            why,
        )
