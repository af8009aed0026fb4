"""Importing a user's module by name (a world's `module`, a gymnasium "module:Id", an
Environment class's "module:Class"), with one-line errors that say how to fix them."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _path_entries() -> set[Path]:
    return {Path(p or os.getcwd()).resolve() for p in sys.path}


def _in_cwd(top: str) -> Path | None:
    """The working directory when it holds `top` (a module file or package folder) and is not
    on the Python path: a console script such as `rwkv-swarm` leaves it off."""
    cwd = Path.cwd().resolve()
    if cwd in _path_entries():
        return None
    return cwd if (cwd / f"{top}.py").is_file() or (cwd / top).is_dir() else None


def import_user_module(name: str) -> ModuleType:
    """Import module `name`: from the Python path, else from the working directory (then
    added to the end of the path). ValueError in one line naming why and the fix."""
    if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
        raise ValueError(f"{name!r} is not a module name; expected a dotted Python name such as "
                         "'mytasks' or 'mypkg.tasks'")
    top = name.split(".")[0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if not (name == missing or name.startswith(missing + ".")):
            raise ValueError(f"importing {name!r} failed: {_one_line(e)} (a module it imports): "
                             f"install that module") from e
        if missing != top:
            parent, _, last = missing.rpartition(".")
            raise ValueError(f"cannot import module {name!r}: package {parent!r} has no module "
                             f"{last!r}") from None
        cwd = _in_cwd(top)
        if cwd is None:
            raise ValueError(f"cannot import module {name!r}: no {top}.py or {top}/ on the Python "
                             f"path or in the working directory {Path.cwd()}; run from the "
                             "folder that holds it, add that folder to PYTHONPATH, or install "
                             "it") from None
    except Exception as e:  # noqa: BLE001 - any error in the user's module body
        raise ValueError(f"importing {name!r} failed: {type(e).__name__}: {_one_line(e)}") \
            from e
    sys.path.append(str(cwd))
    importlib.invalidate_caches()
    return import_user_module(name)
