"""The package's layout: imports go one way, along the data flow (docs/architecture.md).

Every import in every module counts, lazy ones inside functions included: a
lazy import against the direction is still a dependency against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unet_tiles"

# What each subpackage may import of the package (besides itself and the
# package root, which holds only ``__version__`` and lazy entry points).
ALLOWED = {
    "errors": set(),
    "model": {"errors"},
    "pipeline": {"errors", "model"},
    "engine": {"errors", "model", "pipeline"},
    "archive": {"errors", "pipeline"},
    "training": {"errors", "model"},
    "demo": {"errors", "model", "pipeline", "training"},
    "flows": {"errors", "model", "pipeline", "engine", "archive"},
    "cli": {"errors", "model", "pipeline", "engine", "archive", "training", "demo", "flows"},
    "__init__": {"model", "engine"},
}
# Third-party packages only some parts may import, and which.
RESTRICTED = {
    "prefect": {"flows"},
    "prefect_dask": {"flows"},
    "dask_cuda": {"engine/cluster.py"},
    "dask_jobqueue": {"engine/cluster.py"},
    "dask_kubernetes": {"engine/cluster.py"},
}
# Too slow to import for ``unet-tiles --help`` or ``import unet_tiles``.
HEAVY = ("torch", "distributed", "dask_cuda", "prefect", "zarr", "scipy")


def modules() -> list[tuple[str, Path]]:
    return [(path.relative_to(PACKAGE).as_posix(), path) for path in sorted(PACKAGE.rglob("*.py"))]


def part_of(relative: str) -> str:
    head = relative.split("/", 1)[0]
    return head.removesuffix(".py")


def imported(path: Path, relative: str) -> list[tuple[int, str, bool]]:
    """(line, absolute module, at module level outside TYPE_CHECKING) for each import."""
    tree = ast.parse(path.read_text())
    package = ["unet_tiles", *relative.split("/")[:-1]]
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - child.level + 1]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                found.append((child.lineno, module, top))
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
            else:
                visit(child, top and not isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, True)
    return found


def violations(relative: str, path: Path) -> list[str]:
    part = part_of(relative)
    allowed = ALLOWED[part] | {part}
    bad = []
    for line, module, top in imported(path, relative):
        name = module.split(".")
        where = f"{relative}:{line} imports {module}"
        if name[0] == "unet_tiles" and len(name) > 1 and name[1] not in allowed:
            bad.append(f"{where} ({part} may import {sorted(ALLOWED[part])})")
        users = RESTRICTED.get(name[0])
        if users is not None and not any(relative == u or part == u for u in users):
            bad.append(f"{where} (only {sorted(users)} may)")
        lazy_only = part in ("cli", "__init__") or relative.endswith("__init__.py")
        if lazy_only and top and name[0] in HEAVY:
            bad.append(f"{where} at import time (import it inside the function that needs it)")
    return bad


def test_every_module_belongs_to_a_known_part() -> None:
    assert {part_of(relative) for relative, _ in modules()} <= set(ALLOWED)


def test_imports_follow_the_data_flow() -> None:
    found = [v for relative, path in modules() for v in violations(relative, path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("pipeline/plan.py", "from unet_tiles.engine.run import Run\n",
         "may import ['errors', 'model']"),
        ("model/unet.py", "def f():\n    from unet_tiles.pipeline import plan\n",
         "may import ['errors']"),
        ("engine/blocks.py", "import prefect\n", "only ['flows'] may"),
        ("pipeline/window.py", "from ..engine import run\n", "imports unet_tiles.engine"),
        ("cli/segment.py", "import torch\n", "at import time"),
    ],
)
def test_the_check_catches_wrong_imports(tmp_path: Path, relative: str, source: str,
                                         expected: str) -> None:
    path = tmp_path / "module.py"
    path.write_text(source)
    assert any(expected in v for v in violations(relative, path)), violations(relative, path)


def test_lazy_imports_in_the_cli_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "module.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                    "def run():\n    import torch\n")
    assert violations("cli/segment.py", path) == []
