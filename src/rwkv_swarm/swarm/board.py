"""TensorBoard scalars of a run's rows under runs/<id>/tb (`tensorboard = true`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .trace import EventLog

BOARD_SCALARS = ("fitness_mean", "fitness_max", "belief_mean", "belief_var", "sigma", "p_best",
                 "step_norm", "nis")


def open_board(run_dir: str | Path, events: EventLog) -> Any:
    """A TensorBoard writer under runs/<id>/tb, or None (with a warning event) when the
    tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        events.write("warning", message=f"tensorboard = true but it cannot be used "
                                        f"({e}): pip install tensorboard")
        return None
    return SummaryWriter(str(Path(run_dir) / "tb"))


def write_board(board: Any, rows: list[dict[str, Any]]) -> None:
    """Each row's scalars, per node and generation."""
    for r in rows:
        for key in BOARD_SCALARS:
            value = r.get(key)
            if value is not None and math.isfinite(value):
                board.add_scalar(f"node{r['node']}/{key}", value, r["generation"])
    board.flush()
