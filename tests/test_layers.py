"""The package's imports run one way (README, Architecture): no module imports a later layer.

Every ``import mmtp_hpc.…`` and ``from mmtp_hpc.… import`` of every module is read from its
source (function-level imports included), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mmtp_hpc

PACKAGE = Path(mmtp_hpc.__file__).parent

# lowest first; a module may import its own layer and the layers before it
LAYERS = [
    ("foundations", ["errors", "settings"]),
    ("state and neighbours", ["system"]),
    ("files", ["io"]),
    ("MPI layout", ["parallel"]),
    ("potential", ["potentials", "training"]),
    ("dynamics and observers", ["dynamics"]),
    ("analysis", ["analysis"]),
    ("active learning and DFT", ["active"]),
    ("front ends", ["ase", "cli", "__main__", "__init__"]),
]
RANK = {unit: k for k, (_, units) in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.startswith("mmtp_hpc."):
                yield module, node.module, node.lineno
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                yield module, "relative", node.lineno
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("mmtp_hpc."):
                        yield module, alias.name, node.lineno


def test_every_subpackage_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert units <= set(RANK), f"give {sorted(units - set(RANK))} a layer in LAYERS"


def test_no_module_imports_against_the_flow():
    against = []
    for module, target, line in _imports():
        if target == "relative":
            against.append(f"{module}:{line}: relative import (write mmtp_hpc.…)")
            continue
        a, b = _unit(module), _unit(target)
        if RANK[b] > RANK[a]:
            against.append(f"{module}:{line} imports {target} ({LAYERS[RANK[a]][0]} → "
                           f"{LAYERS[RANK[b]][0]})")
    assert not against, "imports against the flow:\n" + "\n".join(against)


def test_the_checker_sees_function_level_imports():
    """The walk finds imports inside functions (as the lazy ones of the CLI are)."""
    found = {(m, t) for m, t, _ in _imports()}
    assert ("mmtp_hpc.cli.efs", "mmtp_hpc.dynamics.domain") in found
