"""Two transports in separate processes exchange real RWKV-7 states, both ways, over CURVE."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time

import torch

from rwkv_swarm.kernels import RWKV7Config, RWKV7State
from rwkv_swarm.node.keys import NodeKeys, SwarmKeyring
from rwkv_swarm.node.transport import Transport
from rwkv_swarm.node.wire import Message, state_from_message, state_message

CONFIG = RWKV7Config(n_embd=128, n_layer=2, head_size=64, vocab_size=16)
FINGERPRINT = b"\x5a" * 32
WAIT_S = 60.0  # bound on every wait across processes (spawn imports torch)


def seeded_state(seed: int) -> RWKV7State:
    state = RWKV7State.zeros(CONFIG, batch=2, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    for t in state.tensors():
        t.copy_(torch.randn(t.shape, generator=gen))
    return state


def receive_state(t: Transport, deadline: float) -> Message:
    while time.monotonic() < deadline:
        for msg in t.poll(50):
            if msg.type == "state":
                return msg
    raise TimeoutError(f"{t.node_id} got no state: {t.stats()}")


def peer_process(keys: NodeKeys, keyring: SwarmKeyring, endpoint: str, out: mp.Queue) -> None:
    """Bob: send its state to alice, then report the state alice sent back."""
    deadline = time.monotonic() + WAIT_S
    with Transport("bob", keys=keys, keyring=keyring, swarm="s") as bob:
        out.put(bob.endpoint)
        bob.connect("alice", endpoint)
        bob.send("alice", state_message(seeded_state(2), FINGERPRINT, swarm="s", node="bob",
                                        gen=1))
        got = state_from_message(receive_state(bob, deadline), CONFIG, fingerprint=FINGERPRINT)
        out.put(got.to_bytes())


def test_two_processes_exchange_states_both_ways() -> None:
    keyring, keys = SwarmKeyring.generate(["alice", "bob"])
    spawn = mp.get_context("spawn")
    out = spawn.Queue()
    deadline = time.monotonic() + WAIT_S
    with Transport("alice", keys=keys["alice"], keyring=keyring, swarm="s") as alice:
        child = spawn.Process(target=peer_process, args=(keys["bob"], keyring, alice.endpoint,
                                                         out))
        child.start()
        try:
            bob_endpoint = out.get(timeout=WAIT_S)
            msg = receive_state(alice, deadline)
            assert msg.node == "bob"
            got = state_from_message(msg, CONFIG, fingerprint=FINGERPRINT)
            assert got.equal(seeded_state(2))
            alice.connect("bob", bob_endpoint)
            alice.send("bob", state_message(seeded_state(1), FINGERPRINT, swarm="s",
                                            node="alice", gen=2))
            back = out.get(timeout=max(1.0, deadline - time.monotonic()))
            assert back == seeded_state(1).to_bytes()
            child.join(timeout=max(1.0, deadline - time.monotonic()))
            assert child.exitcode == 0
        except queue.Empty:
            raise AssertionError(f"the peer process reported nothing: {alice.stats()}") from None
        finally:
            if child.is_alive():
                child.kill()
                child.join()
            out.close()
            out.join_thread()
