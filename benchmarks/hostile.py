"""A live node under 100,000 hostile inputs: each counted by reason, no crash, valid ones delivered.

A swarm member's raw ZeroMQ socket (its keys get it past CURVE, so every input reaches
`decode`) fires a mix of every kind of hostile input in tests/hostile_inputs.py at a live
`Transport` on 127.0.0.1, a chunk at a time, with a valid message from it and one from an
honest peer after each chunk. Prints the inputs tried, what the node counted per reason next to
what each input should be counted as, exceptions out of `poll` (crashes: must be 0), valid
messages delivered, the run time and the CPU it ran on; last, one JSON line. Exits non-zero
unless every input was counted under its reason with no crash.

    PYTHONPATH=src python benchmarks/hostile.py [--count 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from pathlib import Path

import numpy as np

# the kinds of hostile input live beside the test that fires them too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _cpu import cpu, cpu_line  # noqa: E402
from hostile_inputs import AFTER, hostile_kinds, run_hostile  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="hostile inputs to fire")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=200, help="inputs between valid messages")
    args = parser.parse_args()
    machine = cpu()
    kinds = hostile_kinds(np.random.default_rng(args.seed))
    print(cpu_line(machine))
    print(f"python {platform.python_version()}; {len(kinds)} kinds of hostile input, "
          f"{args.count} inputs, a valid message from each sender every {args.chunk}")
    report = run_hostile(args.count, seed=args.seed, chunk=args.chunk)
    print("\ninputs per kind (expected reason):")
    print("\n".join(f"  {report.kinds[k.name]:6d} {k.name} ({k.reason})" for k in kinds))
    print(f"\n{'reason':14} {'expected':>9} {'counted':>9}")
    for reason in sorted(report.expected.keys() | report.dropped.keys()):
        print(f"{reason:14} {report.expected[reason]:9d} {report.dropped.get(reason, 0):9d}")
    counted = report.counted()
    valid_sent = report.valid_sent + 1  # and one after the run
    after = ("alice", AFTER) in report.delivered
    ok = (not report.crashes and report.dropped == dict(report.expected)
          and len(report.delivered) == valid_sent and after)
    print(f"{'total':14} {report.tried:9d} {counted:9d}")
    print(f"\ntried {report.tried}, counted {counted}, crashes {len(report.crashes)}; valid "
          f"messages sent {valid_sent}, delivered {len(report.delivered)} (the last one, sent "
          f"after the run: {'delivered' if after else 'NOT delivered'})")
    print(f"run time {report.seconds:.1f} s ({report.tried / report.seconds:,.0f} inputs/s); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    for crash in report.crashes[:5]:
        print("crash:", crash)
    print(json.dumps({
        "benchmark": "hostile", "tried": report.tried, "counted": counted,
        "counted_by_reason": dict(sorted(report.dropped.items())),
        "expected_by_reason": dict(sorted(report.expected.items())),
        "crashes": len(report.crashes), "valid_sent": valid_sent,
        "valid_delivered": len(report.delivered), "seconds": round(report.seconds, 2),
        "cpu": machine["model"], "cpus": machine["cpus"], "simd": machine["simd"], "ok": ok,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
