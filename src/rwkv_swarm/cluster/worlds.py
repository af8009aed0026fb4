"""A world's own modules, importable on the node actors.

A world may name modules of the user's: kind "python" its class's module, kind "gym" the module
that registers its id (`module`, or "module:Id"). The driver imports them from its Python path
or its working directory; the node actors are other processes, which Ray starts with neither.
`runtime_env_for` gives the Ray runtime_env that puts the folders those modules come from on
the actors' PYTHONPATH (before whatever PYTHONPATH the Ray node already has).

Why PYTHONPATH and not `py_modules`: Ray uploads local `py_modules` only for a whole job
(`ray.init(runtime_env=...)`), and a swarm's actors must also start in a Ray that is already
running (a cluster it joins, or one its caller started); an actor's own runtime_env takes
environment variables anywhere. On a cluster, the folders must exist at the same paths on
every machine (a shared filesystem, or the same checkout), or the modules be installed there.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from ..node.envs import env_modules

INHERITED = "${PYTHONPATH}"  # Ray expands it to the PYTHONPATH of the machine the actor is on


def _envs(config: Any) -> list[Any]:
    """The worlds of a SwarmConfig (one per node), of NodeConfigs, or env specs themselves."""
    if hasattr(config, "node_env") and hasattr(config, "nodes"):
        return [config.node_env(i) for i in range(config.nodes)]
    if hasattr(config, "env"):
        return [config.env]
    if isinstance(config, (str, dict)):
        return [config]
    return [e for c in config for e in _envs(c)]


def _installed() -> list[Path]:
    """Where installed packages and the standard library live: every process has them."""
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("purelib", "platlib", "stdlib", "platstdlib")
            if k in paths]


def _search_path(cwd: Path) -> list[str]:
    entries = [str((cwd if p == "" else Path(p)).resolve()) for p in sys.path]
    return [*entries, str(cwd)]


def module_folders(module: str, cwd: str | Path) -> list[Path]:
    """The folders to put on the path so that `module` imports as it does here (its top-level
    package's or file's parent), or [] when it is installed or not found."""
    cwd = Path(cwd).resolve()
    top = module.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        places = list(getattr(loaded, "__path__", None) or [])
        if not places and getattr(loaded, "__file__", None):
            places = [loaded.__file__]
    else:
        spec = PathFinder.find_spec(top, _search_path(cwd))
        places = [] if spec is None else list(spec.submodule_search_locations or [spec.origin])
    folders = []
    for place in places:
        if not place or not Path(place).exists():
            continue
        folder = Path(place).resolve().parent
        if not any(folder == p or p in folder.parents for p in _installed()):
            folders.append(folder)
    return folders


def runtime_env_for(config: Any, cwd: str | Path) -> dict[str, Any]:
    """The Ray runtime_env to start a swarm's actors with, so that they import every module
    that `config`'s worlds name as the driver, working in `cwd`, does: `{"env_vars":
    {"PYTHONPATH": "<folders>:${PYTHONPATH}"}}`, or `{}` when no world needs a module of the
    user's. `config`: a SwarmConfig (every node's world, variations included), NodeConfigs, or
    env specs. A world the nodes could not build raises ValueError (see `env_modules`)."""
    folders: list[str] = []
    for env in _envs(config):
        for module in env_modules(env):
            for folder in module_folders(module, cwd):
                if str(folder) not in folders:
                    folders.append(str(folder))
    if not folders:
        return {}
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([*folders, INHERITED])}}

