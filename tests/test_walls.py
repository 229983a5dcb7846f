"""The walls between the rooms of service/ and storage/, read from the imports (ast), and for the
ingest path checked again in fresh interpreters (imports are process-wide)."""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a webhook answer must never pay for: the ML stack and the modules that train.
TRAINING = (
    "torch",
    "torchvision",
    "service.vision",
    "service.jobs.pipeline",
    "service.jobs.embedding",
    "service.jobs.predictions",
    "service.jobs.predictor",
    "service.jobs.promotion",
    "service.jobs.versions",
    "service.jobs.worker",
)
# room: what no module in it may import, directly or through other modules of the project
WALLS: dict[str, tuple[str, ...]] = {
    "storage": ("service",),
    "service.vision": (
        "starlette",
        "httpx",
        "uvicorn",
        "apscheduler",
        "sqlalchemy",
        "storage",
        "service.ingest",
        "service.jobs",
        "service.web",
        "service.labelstudio",
    ),
    "service.ingest": TRAINING,
    "service.labelstudio": (
        "storage",
        "sqlalchemy",
        "torch",
        "service.vision",
        "service.ingest",
        "service.jobs",
        "service.web",
    ),
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, known: set[str]) -> Iterator[str]:
    """Every module an import statement names, anywhere in the file (lazy imports too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            # `from service.web import control` imports the module service.web.control
            yield from (
                f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known
            )


def import_graph(root: Path) -> dict[str, set[str]]:
    files = [p for top in ("service", "storage") for p in (root / top).rglob("*.py")]
    known = {module_name(root, p) for p in files}
    return {
        module_name(root, p): set(imported(ast.parse(p.read_text(), str(p)), known)) for p in files
    }


def import_path(graph: dict[str, set[str]], start: str, goal: str) -> list[str]:
    """The shortest chain of imports from ``start`` to ``goal``, or [] when there is none."""
    parents: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        if current == goal:
            path = [current]
            while (parent := parents[path[-1]]) is not None:
                path.append(parent)
            return path[::-1]
        for target in sorted(graph.get(current, set()) - parents.keys()):
            parents[target] = current
            queue.append(target)
    return []


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """One line per module that reaches past its room's wall, with the imports that do it."""
    graph = import_graph(root)
    found = []
    for module in sorted(graph):
        for room, forbidden in WALLS.items():
            if not within(module, room):
                continue
            seen, todo = set(graph[module]), list(graph[module])
            while todo:
                for target in graph.get(todo.pop(), set()) - seen:
                    seen.add(target)
                    todo.append(target)
            for target in sorted(seen):
                if any(within(target, f) for f in forbidden) and not within(target, room):
                    path = " -> ".join(import_path(graph, module, target))
                    found.append(f"{room} must not import {target}: {path}")
    return found


def test_every_wall_holds() -> None:
    assert violations(ROOT) == []


def test_a_broken_wall_is_found(tmp_path: Path) -> None:
    """The check itself: a fold that reaches torch through a helper is named, with its path."""
    for package in ("service", "service/ingest", "service/jobs", "storage"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "service/ingest/fold.py").write_text("from service.jobs import helper\n")
    (tmp_path / "service/jobs/helper.py").write_text("def lazy():\n    import torch\n")
    (tmp_path / "storage/db.py").write_text("from service.settings import Settings\n")
    assert violations(tmp_path) == [
        "service.ingest must not import torch: service.ingest.fold -> service.jobs.helper -> torch",
        "storage must not import service.settings: storage.db -> service.settings",
    ]


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["service.app", "service.ingest.writer_process"])
def test_ingest_path_never_loads_torch(module: str) -> None:
    loaded = modules_after_import(module)
    assert "service.ingest.fold" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "torchvision")]
