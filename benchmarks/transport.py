"""Our transport against raw pyzmq on the same sockets: messages/s and round-trip latency.

For RWKV-7 states of about 16 KiB, 256 KiB and 4 MiB, in plain TCP and in CURVE, two nodes in
this process exchange the same state bytes over the same ROUTER/DEALER pairs (each node binds a
ROUTER and holds a DEALER to the other), with the same socket options:

- raw:  `send(state.to_bytes(), copy=False)` on the DEALER, `recv_multipart(copy=False)` on the
        ROUTER; nothing checked.
- ours: `Transport.send(peer, state_message)` (encode + validate + send) and `Transport.poll()`
        (receive + decode + validate: schema, sizes, finiteness).

Throughput: bursts of BURST messages, then the receiver drains them. Latency: ping-pong, the
echo re-sent by the other node. Rounds alternate raw and ours (order flipped each round); the
ratio is the median over rounds of ours/raw within a round, with its quartiles. Prints a table
and, last, one JSON line with the ratios.

    PYTHONPATH=src python benchmarks/transport.py [--rounds 15] [--seconds 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import zmq
from _cpu import cpu, cpu_line

from rwkv_swarm.kernels import RWKV7Config, RWKV7State
from rwkv_swarm.node.keys import SwarmKeyring
from rwkv_swarm.node.transport import Transport, TransportConfig
from rwkv_swarm.node.wire import Message, state_message

BURST = 16  # messages in flight per throughput burst (below the high-water marks)
TIMEOUT_MS = 10_000  # nothing here should wait this long; a stuck run fails instead of hanging
SIZES = {  # label -> (n_layer, n_embd); head_size 64, batch 1
    "16KiB": (1, 64),
    "256KiB": (4, 256),
    "4MiB": (16, 1024),
}


class Raw:
    """Two raw pyzmq nodes, each with its own context (so its own I/O thread, as a Transport
    has): a ROUTER each, and a DEALER to the other's ROUTER."""

    def __init__(self, config: TransportConfig, curve: bool) -> None:
        self.ctxs = [zmq.Context(), zmq.Context()]
        self.config = config
        keys = [zmq.curve_keypair(), zmq.curve_keypair()] if curve else [None, None]
        self.routers, endpoints = [], []
        for ctx, k in zip(self.ctxs, keys, strict=True):
            r = self._socket(ctx, zmq.ROUTER, k)
            endpoints.append(f"tcp://127.0.0.1:{r.bind_to_random_port('tcp://127.0.0.1')}")
            self.routers.append(r)
        self.dealers = []
        for i, (ctx, k) in enumerate(zip(self.ctxs, keys, strict=True)):
            d = self._socket(ctx, zmq.DEALER, k, server=keys[1 - i])  # to the other's router
            d.connect(endpoints[1 - i])
            self.dealers.append(d)

    def _socket(self, ctx: zmq.Context, kind: int, keys: tuple | None,
                server: tuple | None = None) -> zmq.Socket:
        s = ctx.socket(kind)
        s.linger, s.sndhwm, s.rcvhwm = 0, self.config.sndhwm, self.config.rcvhwm
        s.maxmsgsize = self.config.limits.max_total_bytes
        s.rcvtimeo = s.sndtimeo = TIMEOUT_MS
        if keys is not None:
            s.curve_publickey, s.curve_secretkey = keys
            if server is None:
                s.curve_server = True
            else:
                s.curve_serverkey = server[0]
        return s

    def burst(self, payload: bytes, n: int) -> None:
        for _ in range(n):
            self.dealers[0].send(payload, copy=False)
        for _ in range(n):
            self.routers[1].recv_multipart(copy=False)

    def ping(self, payload: bytes) -> None:
        self.dealers[0].send(payload, copy=False)
        frames = self.routers[1].recv_multipart(copy=False)
        self.dealers[1].send(frames[1], copy=False)  # echo the received frame
        self.routers[0].recv_multipart(copy=False)

    def close(self) -> None:
        for s in self.routers + self.dealers:
            s.close(linger=0)
        for ctx in self.ctxs:
            ctx.term()


class Ours:
    """Two transports connected both ways."""

    def __init__(self, config: TransportConfig, curve: bool) -> None:
        kw: dict = {"config": config, "swarm": "bench"}
        if curve:
            ring, keys = SwarmKeyring.generate(["a", "b"])
            self.a = Transport("a", keys=keys["a"], keyring=ring, **kw)
            self.b = Transport("b", keys=keys["b"], keyring=ring, **kw)
        else:
            self.a = Transport("a", insecure=True, **kw)
            self.b = Transport("b", insecure=True, **kw)
        self.retries = 0  # sends refused because the queue was full (raw would block)
        self.a.connect("b", self.b.endpoint, self.b.public_key)
        self.b.connect("a", self.a.endpoint, self.a.public_key)

    @staticmethod
    def _take(t: Transport, n: int) -> list[Message]:
        got: list[Message] = []
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while len(got) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{t.node_id} received {len(got)} of {n}: {t.stats()}")
            got += t.poll(TIMEOUT_MS)
        return got

    def burst(self, msg: Message, n: int) -> None:
        received = 0
        for _ in range(n):
            while not self.a.send("b", msg):  # queue full: wait as raw's blocking send does
                self.retries += 1
                received += len(self.b.poll(1))
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while received < n:  # like raw, keep no message longer than one poll's batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"b received {received} of {n}: {self.b.stats()}")
            received += len(self.b.poll(TIMEOUT_MS))

    def ping(self, msg: Message) -> None:
        self.a.send("b", msg)
        (got,) = self._take(self.b, 1)
        echo = Message(got.type, got.swarm, "b", got.gen, got.ts, got.fields, got.arrays)
        self.b.send("a", echo)
        self._take(self.a, 1)

    def close(self) -> None:
        self.a.close()
        self.b.close()


def make_state(n_layer: int, n_embd: int) -> RWKV7State:
    config = RWKV7Config(n_embd=n_embd, n_layer=n_layer, head_size=64, vocab_size=16)
    state = RWKV7State.zeros(config, batch=1)
    gen = torch.Generator().manual_seed(0)
    for t in state.tensors():
        t.copy_(torch.randn(t.shape, generator=gen))
    return state


def timed(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n


def measure(label: str, curve: bool, rounds: int, seconds: float) -> dict:
    state = make_state(*SIZES[label])
    payload = state.to_bytes()
    msg = state_message(state, b"\x01" * 32, swarm="bench", node="a", gen=1)
    config = TransportConfig(heartbeat_interval=3600.0)  # no heartbeats inside timings
    raw, ours = Raw(config, curve), Ours(config, curve)
    try:
        runs = {"raw": (raw, payload), "ours": (ours, msg)}
        for side, arg in runs.values():  # warm-up: handshakes, allocator
            side.burst(arg, BURST)
            side.ping(arg)
        per_msg = timed(lambda: raw.burst(payload, BURST), BURST)
        n_burst = max(1, round(seconds / per_msg / BURST))
        n_ping = max(5, round(seconds / per_msg / 4))
        rates: dict[str, list[float]] = {"raw": [], "ours": []}
        rtts: dict[str, list[float]] = {"raw": [], "ours": []}
        for r in range(rounds):
            for name in ("raw", "ours") if r % 2 == 0 else ("ours", "raw"):
                side, arg = runs[name]
                rates[name].append(1 / timed(lambda s=side, a=arg: [s.burst(a, BURST)
                                                                    for _ in range(n_burst)],
                                             n_burst * BURST))
                for _ in range(n_ping):
                    rtts[name].append(timed(lambda s=side, a=arg: s.ping(a), 1))
    finally:
        raw.close()
        ours.close()
    # each round's two contenders ran back to back: their ratio sees the same machine load,
    # and the median drops rounds where a burst of outside load hit one of them only
    ratios = np.array(rates["ours"]) / np.array(rates["raw"])
    out = {"size": label, "bytes": len(payload), "security": "curve" if curve else "plain"}
    for name in ("raw", "ours"):
        out[f"{name}_msg_s"] = float(np.median(rates[name]))
        out[f"{name}_p50_us"] = float(np.percentile(rtts[name], 50) * 1e6)
        out[f"{name}_p99_us"] = float(np.percentile(rtts[name], 99) * 1e6)
    out["ratio"] = float(np.median(ratios))
    out["ratio_q1"], out["ratio_q3"] = (float(q) for q in np.percentile(ratios, [25, 75]))
    out["retries"] = ours.retries
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per case")
    parser.add_argument("--seconds", type=float, default=0.1, help="raw time per round")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    print(cpu_line())
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; python {platform.python_version()}, pyzmq {zmq.__version__},"
          f" libzmq {zmq.zmq_version()}")
    head = (f"{'size':>7} {'bytes':>8} {'security':>8} | {'raw msg/s':>9} {'ours msg/s':>10} "
            f"{'ratio (IQR)':>16} | {'raw p50/p99 us':>15} {'ours p50/p99 us':>16}")
    print(head)
    print("-" * len(head))
    ratios, quartiles = {}, {}
    for curve in (False, True):
        for label in args.sizes:
            r = measure(label, curve, args.rounds, args.seconds)
            waited = f"(ours waited on a full queue {r['retries']}x)" if r["retries"] else ""
            print(f"{label:>7} {r['bytes']:>8} {r['security']:>8} | {r['raw_msg_s']:>9.0f} "
                  f"{r['ours_msg_s']:>10.0f} {r['ratio']:>5.2f} ({r['ratio_q1']:.2f}-"
                  f"{r['ratio_q3']:.2f}) | "
                  f"{r['raw_p50_us']:>7.0f}/{r['raw_p99_us']:<7.0f} "
                  f"{r['ours_p50_us']:>8.0f}/{r['ours_p99_us']:<7.0f} {waited}", flush=True)
            case = f"{r['security']}_{label}"
            ratios[case] = round(r["ratio"], 3)
            quartiles[case] = [round(r["ratio_q1"], 3), round(r["ratio_q3"], 3)]
    print(json.dumps({"benchmark": "transport", "metric": "msg_s_ours_over_raw_median",
                      "target": 0.85, "ratios": ratios, "ratio_quartiles": quartiles,
                      "cpu": cpu()}))


if __name__ == "__main__":
    main()
