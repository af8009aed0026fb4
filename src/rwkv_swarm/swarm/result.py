"""runs/<id>/best/: the best lineage's policy, kept by the coordinator as a run goes.

    best/policy.pt    the best node's `Policy` (node.policy; `Policy.load` reads it, no Ray)
    best/best.json    {"node", "generation" (the generations its weights have run), "p_best",
                       "belief_mean", "belief_var", "time"}

Each file is written to a temporary name and renamed: a file that exists is complete. The two
are written one after the other, policy first; a reader that needs them to agree checks that
best.json's node and generation are the policy's `origin`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..node.policy import POLICY_FILE
from .checkpoints import _atomic_write

BEST_DIR = "best"


def save_best(run_dir: str | Path, best: dict[str, Any], exported: dict[str, Any]) -> Path:
    """Write best/ from `best` (`Coordinator.best()`) and what the best node `exported`
    (`NodeHost.policy()`: {"generation", "policy": the policy file's bytes}); returns the
    folder."""
    folder = Path(run_dir) / BEST_DIR
    folder.mkdir(exist_ok=True)
    _atomic_write(folder / POLICY_FILE, exported["policy"])
    record = {"node": best["node"], "generation": exported["generation"],
              "p_best": best["p_best"], "belief_mean": best["belief_mean"],
              "belief_var": best["belief_var"], "time": time.time()}
    _atomic_write(folder / "best.json", json.dumps(record).encode())
    return folder
