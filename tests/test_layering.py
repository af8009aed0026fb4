"""The subpackages import downward only: swarm -> cluster -> node -> {kalman, kernels} -> util."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rwkv_swarm"
ALLOWED = {
    "util": set(),
    "kernels": {"util"},
    "kalman": {"util"},
    "node": {"kalman", "kernels", "util"},
    "cluster": {"node", "kalman", "kernels", "util"},
    "swarm": {"cluster", "node", "kalman", "kernels", "util"},
}


def imported_subpackages(path: Path) -> set[str]:
    """Subpackages of rwkv_swarm that the module at `path` imports."""
    own = path.relative_to(PACKAGE).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(own[:-1])[: len(own) - node.level]
                names = [".".join(["rwkv_swarm", *base, *(node.module or "").split(".")])]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "rwkv_swarm" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("sub", sorted(ALLOWED))
def test_subpackage_imports_only_downward(sub: str) -> None:
    modules = sorted((PACKAGE / sub).rglob("*.py"))
    assert modules, f"subpackage {sub} has no modules"
    for path in modules:
        bad = imported_subpackages(path) - ALLOWED[sub] - {sub}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}, not allowed for {sub}"


def test_checker_sees_relative_upward_import(tmp_path: Path) -> None:
    probe = PACKAGE / "kernels" / "_probe_layering.py"
    probe.write_text("from ..swarm import x\nfrom . import config\n")
    try:
        assert imported_subpackages(probe) == {"swarm", "kernels"}
    finally:
        probe.unlink()
