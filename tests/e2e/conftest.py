"""End-to-end fixtures: a real Label Studio 1.23.2 and a real `labelloop serve`.

`label_studio` (session) starts Label Studio from `$LABELLOOP_TEST_LS_VENV/bin/label-studio` on a
free loopback port with a fresh data directory and the settings a loopback test needs (legacy
token, SSRF protection off so webhooks may target 127.0.0.1). `labelloop_serve` is a factory that
writes a settings.toml and starts `labelloop serve` against it.

Without the Label Studio venv the e2e tests skip, or fail when LABELLOOP_REQUIRE_SERVICES=1 (CI).
Every test in this directory carries the `e2e` marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

LS_USER = "admin@example.com"
LS_PASSWORD = "labelloop-e2e-password"
LS_TOKEN = "labelloop-e2e-token-0123456789"
# A loaded machine may need longer: LABELLOOP_TEST_LS_START_TIMEOUT (seconds).
LS_START_TIMEOUT = float(os.environ.get("LABELLOOP_TEST_LS_START_TIMEOUT", "180"))

LABELLOOP_API_TOKEN = "labelloop-e2e-api-token"
LABELLOOP_SECRET = "labelloop-e2e-webhook-secret"
LABELLOOP_START_TIMEOUT = 60.0
LABELLOOP_CLI_TIMEOUT = 120.0

# Reports of failed tests get the tails of these logs (see pytest_runtest_makereport).
_RUNNING_LOGS: dict[str, Path] = {}


# ---------------------------------------------------------------------------------------------
# pytest hooks
# ---------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and HERE in Path(item.path).resolve().parents:
        for name, path in list(_RUNNING_LOGS.items()):
            report.sections.append((f"{name} log (tail)", log_tail(path)))
    return report


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def require_services() -> bool:
    return os.environ.get("LABELLOOP_REQUIRE_SERVICES", "") == "1"


def missing_service(reason: str) -> None:
    if require_services():
        pytest.fail(f"{reason} (LABELLOOP_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 60) -> str:
    """The last `lines` lines of a log, runs of identical lines collapsed (LS logs twice)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    collapsed: list[str] = []
    for line in text.splitlines():
        if not collapsed or line != collapsed[-1]:
            collapsed.append(line)
    return "\n".join(collapsed[-lines:])


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds, and reap the leader."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Children (e.g. workers) may outlive the leader; the group is gone once all have exited.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=grace)


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds.

    `check` may raise AssertionError to say "not yet, and here is why": the last message is
    part of the failure.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = f"AssertionError: {exc}"
        if time.monotonic() >= deadline:
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last}", pytrace=False
            )
        time.sleep(interval)


@pytest.fixture
def poll_until() -> Callable[..., Any]:
    """`poll_until(check, timeout, what)`: see `poll`."""
    return poll


def choices_result(choice: str, from_name: str = "label", to_name: str = "image") -> list[dict]:
    return [
        {
            "from_name": from_name,
            "to_name": to_name,
            "type": "choices",
            "origin": "manual",
            "value": {"choices": [choice]},
        }
    ]


def clean_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(drop_prefixes)
        and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------------------------------------
# a webhook receiver on loopback
# ---------------------------------------------------------------------------------------------


class WebhookReceiver:
    """A tiny HTTP server on 127.0.0.1 that records every POST (headers and JSON body)."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[dict[str, str], Any]] = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                received.put((headers, json.loads(raw or b"null")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, timeout: float = 10.0) -> tuple[dict[str, str], Any]:
        """The next (headers with lower-case names, JSON body) received; fail after timeout."""
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no webhook arrived at {self.url} within {timeout} s", pytrace=False)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


# ---------------------------------------------------------------------------------------------
# Label Studio
# ---------------------------------------------------------------------------------------------


@dataclass
class LabelStudio:
    url: str
    token: str
    client: httpx.Client
    log_path: Path
    data_dir: Path
    startup_seconds: float = 0.0

    # -- projects ------------------------------------------------------------------------------

    def create_project(self, title: str, label_config: str) -> int:
        r = self.client.post("/api/projects/", json={"title": title, "label_config": label_config})
        _check(r, 201)
        return int(r.json()["id"])

    def project(self, project_id: int) -> dict:
        r = self.client.get(f"/api/projects/{project_id}/")
        _check(r, 200)
        return dict(r.json())

    # -- tasks ---------------------------------------------------------------------------------

    def import_images(self, project_id: int, files: dict[str, bytes]) -> list[dict]:
        """Upload images (one multipart field per file, else LS collapses them) -> all tasks."""
        before = len(self.tasks(project_id))
        multipart = {
            f"file{i}": (name, content, _content_type(name))
            for i, (name, content) in enumerate(files.items())
        }
        r = self.client.post(f"/api/projects/{project_id}/import", files=multipart)
        _check(r, 201)
        # The community edition imports synchronously; poll briefly anyway.
        expected = before + len(files)

        def imported() -> list[dict] | None:
            tasks = self.tasks(project_id)
            return tasks if len(tasks) >= expected else None

        return list(poll(imported, 30, f"{expected} tasks in project {project_id}"))

    def tasks(self, project_id: int, fields: str | None = None) -> list[dict]:
        tasks: list[dict] = []
        page = 1
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": 100}
            if fields:
                params["fields"] = fields
            r = self.client.get("/api/tasks/", params=params)
            if r.status_code == 404:  # a page past the end
                break
            _check(r, 200)
            body = r.json()
            batch = body["tasks"] if isinstance(body, dict) else body
            tasks.extend(batch)
            total = body.get("total") if isinstance(body, dict) else None
            if not batch or len(batch) < 100 or (total is not None and len(tasks) >= total):
                break
            page += 1
        return tasks

    def task(self, task_id: int) -> dict:
        r = self.client.get(f"/api/tasks/{task_id}/")
        _check(r, 200)
        return dict(r.json())

    # -- annotations and predictions -----------------------------------------------------------

    def annotate(
        self, task_id: int, choice: str, from_name: str = "label", to_name: str = "image"
    ) -> dict:
        r = self.client.post(
            f"/api/tasks/{task_id}/annotations/",
            json={"result": choices_result(choice, from_name, to_name), "was_cancelled": False},
        )
        _check(r, 201)
        return dict(r.json())

    def relabel(
        self, annotation_id: int, choice: str, from_name: str = "label", to_name: str = "image"
    ) -> dict:
        r = self.client.patch(
            f"/api/annotations/{annotation_id}/",
            json={"result": choices_result(choice, from_name, to_name)},
        )
        _check(r, 200)
        return dict(r.json())

    def delete_annotation(self, annotation_id: int) -> None:
        _check(self.client.delete(f"/api/annotations/{annotation_id}/"), 204)

    def predictions(self, project_id: int) -> list[dict]:
        r = self.client.get("/api/predictions/", params={"project": project_id})
        _check(r, 200)
        body = r.json()
        return list(body["results"] if isinstance(body, dict) else body)

    # -- webhooks ------------------------------------------------------------------------------

    def webhooks(self, project_id: int) -> list[dict]:
        r = self.client.get("/api/webhooks/", params={"project": project_id})
        _check(r, 200)
        return [h for h in r.json() if h.get("project") == project_id]

    def add_webhook(
        self, project_id: int, url: str, actions: list[str], headers: dict[str, str] | None = None
    ) -> dict:
        r = self.client.post(
            "/api/webhooks/",
            json={
                "project": project_id,
                "url": url,
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": actions,
                "headers": headers or {},
            },
        )
        _check(r, 201)
        return dict(r.json())

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


def _content_type(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(
        ext, "application/octet-stream"
    )


def _check(r: httpx.Response, expected: int) -> None:
    if r.status_code != expected:
        pytest.fail(
            f"{r.request.method} {r.request.url} -> {r.status_code} (expected {expected}): "
            f"{r.text[:2000]}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    venv = os.environ.get("LABELLOOP_TEST_LS_VENV", "")
    exe = Path(venv) / "bin" / "label-studio" if venv else None
    if exe is None or not exe.exists():
        missing_service(
            f"Label Studio not found: LABELLOOP_TEST_LS_VENV={venv!r} has no bin/label-studio "
            "(scripts/test installs it)"
        )
    assert exe is not None

    root = tmp_path_factory.mktemp("label-studio")
    data_dir = root / "data"
    files_root = root / "files"
    data_dir.mkdir()
    files_root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(("LABEL_STUDIO_", "HEARTEX_", "LABELLOOP_", "DJANGO_", "POSTGRE_"))
    env.pop("HOST", None)
    env.pop("PORT", None)
    env.update(
        {
            "PATH": f"{exe.parent}{os.pathsep}{env.get('PATH', '')}",
            "LABEL_STUDIO_USERNAME": LS_USER,
            "LABEL_STUDIO_PASSWORD": LS_PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": LS_TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        }
    )
    log_path = root / "label-studio.log"
    cmd = [str(exe), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1"]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _RUNNING_LOGS["Label Studio"] = log_path
    client = httpx.Client(
        base_url=url, headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=60.0
    )
    try:
        _wait_for_label_studio(proc, client, log_path)
        ls = LabelStudio(
            url=url,
            token=LS_TOKEN,
            client=client,
            log_path=log_path,
            data_dir=data_dir,
            startup_seconds=time.monotonic() - started,
        )
        r = client.get("/api/current-user/whoami")
        if r.status_code != 200:
            pytest.fail(
                f"Label Studio does not accept the test token: {r.status_code} {r.text[:500]}\n"
                f"--- log tail ---\n{log_tail(log_path)}",
                pytrace=False,
            )
        print(f"\nLabel Studio up at {url} after {ls.startup_seconds:.1f} s", file=sys.stderr)
        yield ls
    finally:
        client.close()
        stop_process_group(proc)
        _RUNNING_LOGS.pop("Label Studio", None)


def _wait_for_label_studio(
    proc: subprocess.Popen[bytes], client: httpx.Client, log_path: Path
) -> None:
    deadline = time.monotonic() + LS_START_TIMEOUT
    last = "no answer yet"
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"Label Studio exited with {proc.returncode} during start-up\n"
                f"--- {log_path} (tail) ---\n{log_tail(log_path)}",
                pytrace=False,
            )
        try:
            r = client.get("/health", timeout=2.0)
            if r.status_code == 200 and r.json().get("status") == "UP":
                return
            last = f"{r.status_code} {r.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        if time.monotonic() >= deadline:
            pytest.fail(
                f"Label Studio not healthy after {LS_START_TIMEOUT:.0f} s (last: {last})\n"
                f"--- {log_path} (tail) ---\n{log_tail(log_path)}",
                pytrace=False,
            )
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# labelloop serve
# ---------------------------------------------------------------------------------------------


def labelloop_exe() -> Path:
    """The console script of the venv running the tests (scripts/test runs .venv/bin/python)."""
    for candidate in (
        Path(sys.executable).parent / "labelloop",
        REPO / ".venv" / "bin" / "labelloop",
    ):
        if candidate.exists():
            return candidate
    found = shutil.which("labelloop")
    if found:
        return Path(found)
    pytest.fail("no `labelloop` console script next to the test interpreter or in .venv/bin")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for nested dicts of scalars (enough for settings.toml)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    out: list[str] = []
    if prefix and (scalars or not tables):
        out.append(f"[{prefix}]")
    out.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
    if out:
        out.append("")
    for k, v in tables.items():
        out.append(to_toml(v, f"{prefix}.{k}" if prefix else str(k)))
    return "\n".join(out)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


_SAME: Any = object()


@dataclass
class Labelloop:
    url: str
    token: str
    secret: str
    webhook_url: str
    config_path: Path
    log_path: Path
    settings: dict[str, Any]
    client: httpx.Client
    exe: Path
    env: dict[str, str]
    project_id: int | None = None
    name: str = "labelloop serve"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def run_cli(
        self, *args: str, timeout: float = LABELLOOP_CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `labelloop <args> --config <settings.toml>` and capture its output."""
        return subprocess.run(
            [str(self.exe), *args, "--config", str(self.config_path)],
            env=self.env,
            cwd=self.config_path.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def status(self, project_id: int | None = None) -> dict:
        pid = self._project(project_id)
        r = self.client.get(f"/projects/{pid}", headers=self.auth)
        if r.status_code != 200:
            raise AssertionError(f"GET /projects/{pid} -> {r.status_code}: {r.text[:1000]}")
        return dict(r.json())

    def post_webhook(self, body: dict, secret: str | None = _SAME) -> httpx.Response:
        """POST a webhook body as Label Studio does; `secret=None` sends no secret header."""
        secret = self.secret if secret is _SAME else secret
        headers = {} if secret is None else {"X-Labelloop-Secret": secret}
        return self.client.post("/webhook", json=body, headers=headers)

    def wait_for(
        self,
        predicate: Callable[[dict], Any],
        timeout: float,
        what: str,
        project_id: int | None = None,
        interval: float = 0.25,
    ) -> dict:
        """Poll the project's status until `predicate(status)` is truthy; return that status.

        Errors (no such project yet, a key missing) count as "not yet". On timeout the test
        fails with the last status and the tail of the service log.
        """
        pid = self._project(project_id)
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(
                    f"labelloop serve exited with {self.proc.returncode} while waiting for "
                    f"{what}\n--- {self.log_path} (tail) ---\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                last = self.status(pid)
                if predicate(last):
                    return dict(last)
            except (httpx.HTTPError, AssertionError, KeyError, IndexError, TypeError) as exc:
                last = f"{last!r} / error: {exc!r}"
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"timed out after {timeout:.0f} s waiting for {what}\nlast status: {last}\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(interval)

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def launch(self) -> None:
        """Start `labelloop serve` with this handle's settings and wait until it is healthy."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), "serve", "--config", str(self.config_path)],
                cwd=self.config_path.parent,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _RUNNING_LOGS[self.name] = self.log_path
        _wait_for_health(self)

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL); `launch()` starts it again on the same
        database and port."""
        if self.proc is not None and self.proc.poll() is None:
            stop_process_group(self.proc, grace=15.0)
        _RUNNING_LOGS.pop(self.name, None)

    def _project(self, project_id: int | None) -> int:
        pid = self.project_id if project_id is None else project_id
        if pid is None:
            raise TypeError("no project_id given and the handle has none")
        return pid


@pytest.fixture
def labelloop_serve(
    label_studio: LabelStudio, tmp_path: Path
) -> Iterator[Callable[..., Labelloop]]:
    """Factory: `labelloop_serve(project_id, threshold=6, settings={...})` -> running service.

    `project_id` becomes the handle's default for `status()`/`wait_for()`. `settings` is merged
    over the test defaults (section -> key -> value; nested tables such as
    `{"projects": {"3": {"threshold": 2}}}` allowed). `migrate=True` runs `labelloop migrate`
    first (the contract's command; it must be idempotent).
    """
    started: list[Labelloop] = []
    opened: list[httpx.Client] = []

    def start(
        project_id: int | None = None,
        *,
        threshold: int = 50,
        settings: dict[str, Any] | None = None,
        migrate: bool = True,
    ) -> Labelloop:
        n = len(opened)
        home = tmp_path / f"labelloop{n}"
        home.mkdir()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        base: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": port, "api_token": LABELLOOP_API_TOKEN},
            "database": {"url": f"sqlite:///{home / 'labelloop.db'}"},
            "label_studio": {"url": label_studio.url, "api_key": label_studio.token},
            "webhook": {"url": f"{url}/webhook", "secret": LABELLOOP_SECRET},
            "training": {
                "threshold": threshold,
                "weights": "none",
                "image_size": 64,
                "device": "cpu",
            },
        }
        merged = _merge(base, settings or {})
        config_path = home / "settings.toml"
        config_path.write_text(to_toml(merged))
        env = clean_env(("LABELLOOP_",))
        env["TORCH_HOME"] = str(home / "torch")
        client = httpx.Client(base_url=url, timeout=30.0)
        opened.append(client)
        ll = Labelloop(
            url=url,
            token=str(merged["server"]["api_token"]),
            secret=str(merged["webhook"]["secret"]),
            webhook_url=str(merged["webhook"]["url"]),
            config_path=config_path,
            log_path=home / "labelloop.log",
            settings=merged,
            client=client,
            exe=labelloop_exe(),
            env=env,
            project_id=project_id,
            name=f"labelloop serve #{n}",
        )
        if migrate:
            done = ll.run_cli("migrate")
            if done.returncode != 0:
                pytest.fail(
                    f"labelloop migrate -> rc {done.returncode}\n{done.stdout}\n{done.stderr}",
                    pytrace=False,
                )
        started.append(ll)
        ll.launch()
        return ll

    try:
        yield start
    finally:
        for ll in started:
            ll.stop()
        for client in opened:
            client.close()


def _wait_for_health(ll: Labelloop) -> None:
    assert ll.proc is not None
    deadline = time.monotonic() + LABELLOOP_START_TIMEOUT
    last = "no answer yet"
    while True:
        if ll.proc.poll() is not None:
            pytest.fail(
                f"labelloop serve exited with {ll.proc.returncode} during start-up\n"
                f"--- {ll.log_path} (tail) ---\n{ll.log_tail()}",
                pytrace=False,
            )
        try:
            r = ll.client.get("/health", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        if time.monotonic() >= deadline:
            pytest.fail(
                f"labelloop serve not healthy after {LABELLOOP_START_TIMEOUT:.0f} s "
                f"(last: {last})\n--- {ll.log_path} (tail) ---\n{ll.log_tail()}",
                pytrace=False,
            )
        time.sleep(0.25)
