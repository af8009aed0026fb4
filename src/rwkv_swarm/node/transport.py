"""Peer-to-peer ZeroMQ transport for wire messages: CURVE by default, never raises on bad input.

Pattern: each transport binds one ROUTER (a CURVE server) that every peer sends to, and opens
one DEALER (a CURVE client) per peer it sends to. A ROUTER answers each heartbeat through the
same connection, so a node also hears from peers that never connected back. One `poll` loop
drains the sockets, validates, sends heartbeats when due and keeps per-peer liveness.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.backend import Socket as _BackendSocket
from zmq.utils import z85

from ..util.alloc import tune_allocator
from .keys import NodeKeys, SwarmKeyring, check_key
from .wire import (
    DEFAULT_LIMITS,
    MAX_ID_CHARS,
    REASONS,
    Message,
    ProtocolError,
    WireLimits,
    decode_received,
    encode_sized,
    message,
    receiving,
)

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats to each peer
HEARTBEAT_LIVENESS = 3  # heartbeat intervals of silence after which a peer is dead
SNDHWM = 64  # messages queued for one peer before send() drops
RCVHWM = 64  # messages queued from one sender before ZeroMQ stops reading its connection
MAX_BATCH = 1000  # messages one poll() takes from one socket before it returns

# plain ints: pyzmq's enum flags cost a microsecond per frame to combine
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_backend_send = _BackendSocket.send
_EVENTS, _POLLOUT = int(zmq.EVENTS), int(zmq.POLLOUT)
# Frames at least this large are lent to ZeroMQ, smaller ones copied. Lending costs a release
# by pyzmq's thread, which needs the GIL; a copy costs a pass over the frame. Plain TCP: with
# the allocator tuned (util.alloc) the copy is cheaper up to about 512 KiB (256 KiB: about 10
# us less a message), then no longer fits in cache. CURVE: lending is cheaper from 64 KiB, as
# ZeroMQ's I/O thread copies the frame to encrypt it anyway. Measured: docs/wire.md.
_LEND_FROM = {"plain": 512 * 1024, "curve": 64 * 1024}

# what stats()["dropped"] counts: the wire's REASONS, then the transport's own
DROP_REASONS = (
    *REASONS,
    "impersonation",  # the message's node is not the sender that CURVE authenticated
    "wrong_swarm",  # a message of another swarm (heartbeats excepted)
    "send_blocked",  # send() or a heartbeat found the peer's queue full
    "internal",  # decode raised something other than ProtocolError: a bug, counted, not fatal
)


@dataclass(frozen=True)
class TransportConfig:
    """Timings and bounds of a transport. Memory held per sender <= rcvhwm x max_total_bytes."""

    heartbeat_interval: float = HEARTBEAT_INTERVAL  # seconds between heartbeats to each peer
    heartbeat_liveness: int = HEARTBEAT_LIVENESS  # silent intervals before a peer is dead
    sndhwm: int = SNDHWM  # messages queued per peer; beyond, send() drops and counts
    rcvhwm: int = RCVHWM  # messages queued per sender; beyond, ZeroMQ stops reading it
    max_batch: int = MAX_BATCH  # messages taken from one socket per poll() round
    limits: WireLimits = DEFAULT_LIMITS  # what a message may be; a frame over max_total_bytes
    #                                      makes ZeroMQ drop the sender's connection (MAXMSGSIZE)
    reconnect_ivl_ms: int = 100  # ZeroMQ's first reconnect delay to a lost peer
    tune_allocator: bool = True  # fix glibc's malloc thresholds for the process (util.alloc):
    #                              large messages then reuse heap memory, not fresh pages


@dataclass
class _Peer:
    socket: zmq.Socket
    endpoint: str
    public_key: bytes | None
    last_seen: float  # monotonic time of its last valid message (or of connect)


@dataclass
class _Stats:
    sent: int = 0
    received: int = 0
    heartbeats_sent: int = 0
    heartbeats_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class _Authenticator(ThreadAuthenticator):
    """ZAP handler admitting CURVE clients whose key is trusted; their User-Id is their node id.

    CURVE alone (allow_any) would admit any client that knows our public key.
    """

    def __init__(self, context: zmq.Context, transport: Transport) -> None:
        super().__init__(context)
        self._transport = transport
        self.configure_curve_callback("*", self)

    def callback(self, domain: str, key: bytes) -> bool:
        return self._transport._node_of(key) is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._transport._node_of(z85.encode(client_public_key)) or ""


class Transport:
    """A node's endpoint: binds on `host` (a random port unless `port`), talks to its peers.

    Secure unless `insecure=True`: CURVE encryption with `keys` (fresh ones when None), and
    only senders in `keyring` or passed to `connect` are admitted. `swarm`, when given, drops
    messages of other swarms.
    """

    def __init__(
        self,
        node_id: str,
        host: str = "127.0.0.1",
        *,
        port: int | None = None,
        keys: NodeKeys | None = None,
        keyring: SwarmKeyring | None = None,
        swarm: str | None = None,
        config: TransportConfig = TransportConfig(),  # noqa: B008 - frozen, shared safely
        insecure: bool = False,
    ) -> None:
        if type(node_id) is not str or not 0 < len(node_id) <= MAX_ID_CHARS:
            raise ValueError(f"node_id must be a str of 1..{MAX_ID_CHARS} chars, got {node_id!r}")
        if insecure and (keys is not None or keyring is not None):
            raise ValueError("insecure=True takes no keys or keyring: plain TCP has no keys")
        self.node_id = node_id
        self.swarm = swarm
        self.config = config
        self.secure = not insecure
        self.keys = None if insecure else (keys or NodeKeys.generate())
        self._keyring = keyring if keyring is not None else SwarmKeyring()
        self._connected_keys: dict[bytes, str] = {}
        self._peers: dict[str, _Peer] = {}
        self._peer_of: dict[zmq.Socket, str] = {}  # DEALER -> the peer it talks to
        self._stats = _Stats()
        self._gen = 0
        self._next_heartbeat = time.monotonic() + config.heartbeat_interval
        self._closed = False
        self._lend_from = _LEND_FROM["curve" if self.secure else "plain"]
        if config.tune_allocator:
            tune_allocator()
        self._ctx = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        self._auth: _Authenticator | None = None
        try:
            if self.secure:
                self._auth = _Authenticator(self._ctx, self)
                self._auth.start()  # before the bind: no client may arrive unchecked
            self._router = self._socket(zmq.ROUTER)
            if port is None:
                port = self._router.bind_to_random_port(f"tcp://{host}")
            else:
                self._router.bind(f"tcp://{host}:{port}")
            self.endpoint = f"tcp://{host}:{port}"
            self._poller = zmq.Poller()
            self._poller.register(self._router, zmq.POLLIN)
        except BaseException:
            self.close()
            raise

    @property
    def public_key(self) -> bytes | None:
        """What peers pass to `connect` for this node (None when insecure)."""
        return self.keys.public if self.keys else None

    # -- sockets: made in one place, closed in one place --------------------------------------

    def _socket(self, kind: int, server_key: bytes | None = None) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        self._sockets.append(sock)
        sock.linger = 0
        sock.sndhwm = self.config.sndhwm
        sock.rcvhwm = self.config.rcvhwm
        sock.maxmsgsize = self.config.limits.max_total_bytes
        sock.reconnect_ivl = self.config.reconnect_ivl_ms
        if self.keys is not None:
            sock.curve_secretkey = self.keys.secret
            sock.curve_publickey = self.keys.public
            if kind == zmq.ROUTER:
                sock.curve_server = True
            else:
                sock.curve_serverkey = server_key
        return sock

    def close(self) -> None:
        """Close every socket (linger 0), stop the authenticator, terminate the context."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._auth is not None:
                self._auth.stop()
        finally:
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
            self._peers.clear()
            self._peer_of.clear()
            self._ctx.term()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- peers ---------------------------------------------------------------------------------

    def _node_of(self, public_key: bytes) -> str | None:
        """Node id of an admitted CURVE public key (Z85); called on the authenticator thread."""
        return self._connected_keys.get(public_key) or self._keyring.node_of(public_key)

    def connect(self, peer_id: str, endpoint: str, public_key: bytes | None = None) -> None:
        """Open a channel to `peer_id` at `endpoint`; its key defaults to the keyring's.

        The peer's key is verified by CURVE, and the peer is admitted as a sender too.
        """
        self._check_open()
        if peer_id in self._peers:
            raise ValueError(f"already connected to {peer_id!r} at {self._peers[peer_id].endpoint}")
        if self.secure and public_key is None:
            public_key = self._keyring.public_key(peer_id)
        if not self.secure and public_key is not None:
            raise ValueError("an insecure transport takes no public keys")
        if public_key is not None:
            check_key(f"public key of {peer_id!r}", public_key)
            owner = self._node_of(public_key)
            if owner is not None and owner != peer_id:
                raise ValueError(f"public key given for {peer_id!r} belongs to {owner!r}")
        sock = self._socket(zmq.DEALER, server_key=public_key)
        sock.connect(endpoint)
        if public_key is not None:
            self._connected_keys = {**self._connected_keys, public_key: peer_id}
        self._peers[peer_id] = _Peer(sock, endpoint, public_key, time.monotonic())
        self._peer_of[sock] = peer_id
        self._poller.register(sock, zmq.POLLIN)

    def disconnect(self, peer_id: str) -> None:
        """Close the channel to `peer_id` and stop admitting it (unless the keyring does)."""
        self._check_open()
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            raise KeyError(f"not connected to {peer_id!r}")
        self._poller.unregister(peer.socket)
        del self._peer_of[peer.socket]
        self._sockets.remove(peer.socket)
        peer.socket.close(linger=0)
        self._connected_keys = {k: n for k, n in self._connected_keys.items() if n != peer_id}

    def peers(self) -> list[str]:
        return list(self._peers)

    def dead_peers(self) -> list[str]:
        """Connected peers silent for heartbeat_interval x heartbeat_liveness seconds or more."""
        limit = self.config.heartbeat_interval * self.config.heartbeat_liveness
        now = time.monotonic()
        return [p for p, peer in self._peers.items() if now - peer.last_seen >= limit]

    # -- sending -------------------------------------------------------------------------------

    def send(self, peer_id: str, msg: Message) -> bool:
        """Queue `msg` for `peer_id`; False (and counted) when its queue is full.

        Arrays that `encode` does not pack into frame 1 go to ZeroMQ without a copy when
        large (512 KiB or more in plain TCP, 64 KiB with CURVE): do not change them afterwards.
        Raises ProtocolError for an invalid message, KeyError for an unknown peer.
        """
        self._check_open()
        peer = self._peers.get(peer_id)
        if peer is None:
            raise KeyError(f"not connected to {peer_id!r}; connected: {sorted(self._peers)}")
        if not self._send(peer.socket, *self._encode(msg)):
            return False
        self._stats.sent += 1
        return True

    def broadcast(self, msg: Message, peers: Iterable[str] | None = None) -> int:
        """Queue `msg` for every connected peer, or for those of `peers` that are connected;
        returns how many took it. The message is encoded once, whatever the number of peers."""
        self._check_open()
        if peers is None:
            targets = list(self._peers.values())
        else:
            targets = [self._peers[p] for p in peers if p in self._peers]
            if not targets:  # nothing to encode for
                return 0
        frames, nbytes = self._encode(msg)
        queued = sum(self._send(peer.socket, frames, nbytes) for peer in targets)
        self._stats.sent += queued
        return queued

    def _encode(self, msg: Message) -> tuple[list[bytes | memoryview], int]:
        if msg.node != self.node_id:
            raise ValueError(f"message from node {msg.node!r} sent by {self.node_id!r}: peers "
                             "would drop it as impersonation")
        self._gen = max(self._gen, msg.gen)
        return encode_sized(msg, self.config.limits)

    def _send(self, sock: zmq.Socket, frames: list[Any], nbytes: int, route: Any = None) -> bool:
        """Queue frames without blocking; False (counted) when the peer's queue is full."""
        parts = frames if route is None else [route, *frames]
        try:
            _send_frames(sock, parts, self._lend_from)
        except zmq.Again:
            # A sender learns that its peer has read messages from commands that libzmq
            # processes at most once a millisecond while sends do not block, so a queue the
            # peer has drained can still look full. Reading EVENTS processes them now.
            if not sock.get(_EVENTS) & _POLLOUT or not _try_send(sock, parts, self._lend_from):
                self._stats.dropped["send_blocked"] += 1
                return False
        self._stats.bytes_sent += nbytes
        return True

    def _heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.config.heartbeat_interval
        if not self._peers:
            return
        frames, nbytes = encode_sized(self._heartbeat_message())
        for peer in self._peers.values():
            self._stats.heartbeats_sent += self._send(peer.socket, frames, nbytes)

    def _heartbeat_message(self) -> Message:
        return message("heartbeat", swarm=self.swarm or "-", node=self.node_id, gen=self._gen)

    # -- receiving -----------------------------------------------------------------------------

    def poll(self, timeout_ms: float = 0) -> list[Message]:
        """Valid messages that arrive within `timeout_ms` (all that are waiting, once any are).

        Sends heartbeats when due and answers peers' heartbeats. Never raises on bad input:
        a bad message is dropped and counted by reason (`DROP_REASONS`) in `stats()["dropped"]`.
        """
        self._check_open()
        now = time.monotonic()
        deadline = now + max(timeout_ms, 0) / 1000
        out: list[Message] = []
        while True:
            self._heartbeat(now)
            # whole milliseconds, rounded up: rounded to nearest, the last half millisecond
            # before a deadline (or a heartbeat) was spent spinning on poll(0)
            wait_ms = math.ceil((min(deadline, self._next_heartbeat) - now) * 1000)
            ready = self._poller.poll(max(wait_ms, 0))
            if ready:
                with receiving():  # the GC paused once per batch, not per message
                    for sock, _ in ready:
                        self._drain(sock, out)
            now = time.monotonic()
            if out or now >= deadline:
                return out

    def _drain(self, sock: zmq.Socket, out: list[Message]) -> None:
        from_router = sock is self._router
        peer_id = None if from_router else self._peer_of[sock]
        keep = self.config.limits.max_frames + 2  # enough for decode to see "too many"
        for _ in range(self.config.max_batch):
            frames = _recv_frames(sock, keep)
            if frames is None:
                return
            route = frames.pop(0) if from_router else None
            self._stats.bytes_received += sum(map(len, frames))
            msg = self._accept(frames, peer_id)
            if msg is None:
                continue
            if msg.type != "heartbeat":
                self._stats.received += 1
                out.append(msg)
                continue
            self._stats.heartbeats_received += 1
            if route is not None:  # answer through the same connection
                frames, nbytes = encode_sized(self._heartbeat_message())
                self._stats.heartbeats_sent += self._send(self._router, frames, nbytes, route)

    def _accept(self, frames: list[zmq.Frame], peer_id: str | None) -> Message | None:
        """The message in `frames` if valid and from whom it claims to be, else None (counted)."""
        try:
            msg = decode_received(frames, self.config.limits)
        except ProtocolError as e:
            self._stats.dropped[e.reason] += 1
            return None
        except Exception:  # decode's bug must not let one peer's frame stop this node
            if not self._stats.dropped["internal"]:
                log.exception("%s: decode raised other than ProtocolError; dropping such "
                              "messages, counted as 'internal'", self.node_id)
            self._stats.dropped["internal"] += 1
            return None
        sender = peer_id if peer_id is not None else self._authenticated_sender(frames)
        if sender is not None and msg.node != sender:
            self._stats.dropped["impersonation"] += 1
            return None
        if self.swarm is not None and msg.swarm != self.swarm and msg.type != "heartbeat":
            self._stats.dropped["wrong_swarm"] += 1
            return None
        peer = self._peers.get(msg.node)
        if peer is not None:
            peer.last_seen = time.monotonic()
        return msg

    def _authenticated_sender(self, frames: list[zmq.Frame]) -> str | None:
        """Node id that ZAP bound to the sender's CURVE key; None on an insecure transport."""
        if not self.secure:
            return None
        try:
            return frames[0].get("User-Id")
        except (zmq.ZMQError, IndexError):
            return ""

    # -- state ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: sent, received, heartbeats, bytes, dropped by reason, peers' liveness."""
        now = time.monotonic()
        dead = set(self.dead_peers()) if not self._closed else set()
        s = self._stats
        return {
            "node": self.node_id, "endpoint": getattr(self, "endpoint", None),
            "sent": s.sent, "received": s.received,
            "heartbeats_sent": s.heartbeats_sent, "heartbeats_received": s.heartbeats_received,
            "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
            "dropped": dict(s.dropped),
            "peers": {p: {"endpoint": peer.endpoint, "alive": p not in dead,
                          "silent_s": now - peer.last_seen} for p, peer in self._peers.items()},
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"transport of {self.node_id!r} is closed")


def _send_frames(sock: zmq.Socket, parts: list[Any], lend_from: int) -> None:
    """send_multipart without its per-call overhead; raises zmq.Again on the first part only.

    Calls the backend's send directly: the Python layer above it only adds DRAFT options, at
    0.2 us a frame. Memoryviews of `lend_from` bytes or more are lent, not copied.
    """
    last = len(parts) - 1
    for i, part in enumerate(parts):
        big = type(part) is memoryview and part.nbytes >= lend_from
        _backend_send(sock, part, _NOBLOCK_MORE if i < last else _NOBLOCK, not big)


def _try_send(sock: zmq.Socket, parts: list[Any], lend_from: int) -> bool:
    try:
        _send_frames(sock, parts, lend_from)
    except zmq.Again:
        return False
    return True


def _recv_frames(sock: zmq.Socket, keep: int) -> list[zmq.Frame] | None:
    """One waiting message as frames (beyond `keep` frames the rest is discarded), or None."""
    recv = sock.recv
    try:
        frame = recv(_NOBLOCK, False)
    except zmq.Again:
        return None
    frames = [frame]
    while frame.more:  # the rest of a message arrives with its first frame
        frame = recv(_NOBLOCK, False)
        if len(frames) < keep:
            frames.append(frame)
    return frames
