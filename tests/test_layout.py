"""The package layout of docs/architecture.md: imports go one way only.

Every import statement of the three packages is read from the source (function-level and
``TYPE_CHECKING`` imports included, since a lazy import is still a dependency), and each is
checked against the layers below. A new sub-package of ``server_extension`` fails the test
until it is given a place here and in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("workbench_core", "server_extension", "agents_widget")

# Which parts each part may import, besides itself. The server's parts are its sub-packages;
# ``server_extension`` alone is the package's __init__ (the Jupyter extension entry point).
ALLOWED: dict[str, set[str]] = {
    "workbench_core": set(),
    "server_extension.workspace": {"workbench_core"},
    "server_extension.serving": {"workbench_core", "server_extension.workspace"},
    "server_extension.handlers": {"workbench_core", "server_extension.workspace",
                                  "server_extension.serving"},
    "server_extension.training": {"workbench_core", "server_extension.serving"},
    "server_extension.demos": {"workbench_core", "server_extension.workspace",
                               "server_extension.serving", "server_extension.training"},
    "server_extension.hosts": {"workbench_core", "server_extension.workspace",
                               "server_extension.serving", "server_extension.handlers",
                               "server_extension.training", "server_extension.demos"},
    "server_extension": {"server_extension.hosts"},
    "agents_widget": {"workbench_core"},
}
# The one place the panel's package reaches into the server: the notebook training API keeps
# the import path notebooks use and re-exports the trainer that lives beside the runtimes.
EXCEPTIONS = {("agents_widget.agilerl_training", "server_extension.training")}


def part_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "server_extension" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Absolute module names of the project's packages that ``path`` imports."""
    rel = path.relative_to(REPO).with_suffix("").parts if path.is_relative_to(REPO) else ()
    package = list(rel[:-1])  # the package a relative import starts from
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            if base:
                targets.add(base)
                # `from server_extension import hosts` names a sub-package, not an attribute.
                targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t.split(".")[0] in PACKAGES}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if part_of(m) not in ALLOWED)
    assert not unplaced, (f"{unplaced} belong to no layer: add their package to ALLOWED in "
                          "tests/test_layout.py and to docs/architecture.md")


def test_imports_go_one_way() -> None:
    known = modules()
    wrong = []
    for module, path in known.items():
        mine = part_of(module)
        for target in imports_of(path):
            # `from pkg import name` also yields pkg.name for attributes; only modules count.
            if target not in known:
                continue
            theirs = part_of(target)
            if theirs == mine or theirs in ALLOWED[mine] or (module, theirs) in EXCEPTIONS:
                continue
            wrong.append(f"{module} imports {target} ({mine} may import "
                         f"{sorted(ALLOWED[mine]) or 'nothing of the project'})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    # The walk must notice function-level imports, which most of the cross-layer ones were.
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from agents_widget.tracking import start_experiment\n")
    assert imports_of(source) == {"agents_widget.tracking",
                                  "agents_widget.tracking.start_experiment"}
    assert part_of("server_extension.serving.worker.child") == "server_extension.serving"
    panel = REPO / "agents_widget" / "details.py"
    assert "agents_widget.client" in imports_of(panel)  # its `from .client import ...`


@pytest.mark.parametrize(("public", "home"), [
    ("agents_widget.tracking", "workbench_core.tracking"),
    ("agents_widget.agilerl_training", "server_extension.training.agilerl"),
])
def test_notebook_api_keeps_its_import_path(public: str, home: str) -> None:
    import importlib

    shim, real = importlib.import_module(public), importlib.import_module(home)
    for name in real.__all__:
        assert getattr(shim, name) is getattr(real, name), f"{public}.{name}"
