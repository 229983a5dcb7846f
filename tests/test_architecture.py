"""The walls between layers, checked in fresh interpreters (imports are process-wide)."""

import subprocess
import sys

import pytest


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["service.app", "service.writer_process"])
def test_ingest_path_never_imports_torch(module: str) -> None:
    loaded = modules_after_import(module)
    assert "service.webhooks" in loaded or "service.fold" in loaded
    assert "torch" not in loaded


@pytest.mark.parametrize("module", ["storage.tables", "storage.jobs", "storage.labels"])
def test_storage_never_imports_service(module: str) -> None:
    assert not any(m.startswith("service") for m in modules_after_import(module))


def test_vision_is_a_plain_ml_library() -> None:
    loaded = modules_after_import("service.vision.head, service.vision.backbone")
    forbidden = ("starlette", "httpx", "storage", "sqlalchemy")
    assert not [m for m in loaded if m.split(".")[0] in forbidden]
