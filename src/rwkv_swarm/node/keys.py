"""CURVE keys of a swarm: each node's keypair, and the public keys the coordinator hands out."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import zmq
from zmq.utils import z85

Z85_KEY_BYTES = 40  # a Curve25519 key as Z85 text


def check_key(what: str, key: bytes) -> None:
    """Raise ValueError unless `key` is a CURVE key as Z85 text."""
    if type(key) is not bytes or len(key) != Z85_KEY_BYTES:
        raise ValueError(f"{what} must be {Z85_KEY_BYTES} bytes of Z85 text, got "
                         f"{type(key).__name__} of length {len(key) if key is not None else 0}")
    try:
        z85.decode(key)
    except (KeyError, struct.error) as e:  # what pyzmq's z85 raises on bad characters
        raise ValueError(f"{what} is not Z85 text: {e!r}") from None


@dataclass(frozen=True)
class NodeKeys:
    """One node's CURVE keypair, as Z85 text (what `zmq.curve_keypair()` returns)."""

    public: bytes  # Z85, 40 bytes: handed to peers
    secret: bytes = field(repr=False)  # Z85, 40 bytes: never leaves the node

    def __post_init__(self) -> None:
        check_key("public key", self.public)
        check_key("secret key", self.secret)
        if zmq.curve_public(self.secret) != self.public:
            raise ValueError("public key does not belong to the secret key")

    @classmethod
    def generate(cls) -> NodeKeys:
        """A fresh keypair (libsodium's random source)."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


class SwarmKeyring:
    """Node id -> CURVE public key of each swarm member: the set a transport admits.

    Safe to read from the authenticator thread: updates replace the maps, never mutate them.
    """

    def __init__(self, public_keys: Mapping[str, bytes] | None = None) -> None:
        self._by_node: dict[str, bytes] = {}
        self._by_key: dict[bytes, str] = {}
        for node_id, key in (public_keys or {}).items():
            self.add(node_id, key)

    @classmethod
    def generate(cls, node_ids: Iterable[str]) -> tuple[SwarmKeyring, dict[str, NodeKeys]]:
        """A keyring for `node_ids` and each node's fresh keypair (the coordinator's job)."""
        keys = {node_id: NodeKeys.generate() for node_id in node_ids}
        return cls({node_id: k.public for node_id, k in keys.items()}), keys

    def add(self, node_id: str, public_key: bytes) -> None:
        """Admit `node_id` with `public_key` (replacing its previous key)."""
        check_key(f"public key of {node_id!r}", public_key)
        owner = self._by_key.get(public_key)
        if owner is not None and owner != node_id:
            raise ValueError(f"public key of {node_id!r} already belongs to {owner!r}")
        by_node = {**self._by_node, node_id: public_key}
        self._by_key = {key: node for node, key in by_node.items()}
        self._by_node = by_node

    def remove(self, node_id: str) -> None:
        """Stop admitting `node_id` (connections already made stay up)."""
        by_node = {n: k for n, k in self._by_node.items() if n != node_id}
        self._by_key = {key: node for node, key in by_node.items()}
        self._by_node = by_node

    def public_key(self, node_id: str) -> bytes:
        try:
            return self._by_node[node_id]
        except KeyError:
            raise KeyError(f"node {node_id!r} is not in the keyring") from None

    def node_of(self, public_key: bytes) -> str | None:
        """The node id owning `public_key` (Z85), or None."""
        return self._by_key.get(public_key)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_node

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_node)

    def __len__(self) -> int:
        return len(self._by_node)
