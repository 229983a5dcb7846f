"""The ``labelloop`` command: serve, worker, register, retrain, status, migrate."""

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import sqlalchemy as sa

from service.labelstudio.errors import LabelStudioError, WebhookRefused
from service.logs import configure_logging
from service.settings import Settings, SettingsError, load_settings
from service.web.auth import SECRET_HEADER
from storage.migrate import upgrade

logger = logging.getLogger("labelloop")

FINISHED = ("succeeded", "failed", "skipped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"labelloop: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_format, secrets=settings.secrets())
    command: Any = args.command
    try:
        return int(command(settings, args))
    except KeyboardInterrupt:
        return 130
    except httpx.TransportError as exc:  # status/retrain talk to a running labelloop
        url = _server_url(settings, args)
        print(
            f"labelloop: cannot reach {url} ({exc}); is labelloop serve running?", file=sys.stderr
        )
        return 1


def serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.jobs.memory import tune_malloc

    tune_malloc()

    upgrade(settings.database.url)
    app = create_app(settings, run_worker=not args.no_worker, writer_process=True)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        access_log=False,
        log_config=None,
        # The same proxies the session cookie's Secure flag believes (service.web.session).
        proxy_headers=True,
        forwarded_allow_ips=settings.server.forwarded_allow_ips,
    )
    return 0


def worker(settings: Settings, args: argparse.Namespace) -> int:
    from service.context import open_services
    from service.jobs.memory import tune_malloc
    from service.jobs.worker import Worker

    tune_malloc()
    upgrade(settings.database.url)

    async def run() -> None:
        async with open_services(settings) as services:
            await Worker(services).run()

    asyncio.run(run())
    return 0


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    upgrade(settings.database.url)
    print("database is at the newest schema")
    return 0


def register(settings: Settings, args: argparse.Namespace) -> int:
    """Create or update the project's webhook, then learn what the project already holds."""
    if not settings.webhook.secret:
        logger.warning("webhook.secret is empty: the webhook will carry no secret")
    try:
        upgrade(settings.database.url)
        return asyncio.run(register_project(settings, args.project))
    except sa.exc.DBAPIError as exc:
        print(f"labelloop: database unavailable: {type(exc.orig).__name__}", file=sys.stderr)
        return 1


async def register_project(
    settings: Settings, project_id: int, *, transport: httpx.AsyncBaseTransport | None = None
) -> int:
    """The webhook first, then a catch-up: an annotation made after the webhook exists comes
    by webhook, one made before is in the listing. ``transport`` fakes the network (tests)."""
    from service.context import open_services
    from service.jobs.catchup import learn

    headers = {SECRET_HEADER: settings.webhook.secret} if settings.webhook.secret else {}
    async with open_services(settings, transport=transport) as services:
        try:
            hook, created = await services.label_studio.ensure_webhook(
                project_id, settings.webhook.url, headers
            )
        except WebhookRefused as exc:
            print(f"labelloop: {exc}", file=sys.stderr)
            return 2
        except LabelStudioError as exc:
            print(f"labelloop: could not register the webhook: {exc}", file=sys.stderr)
            return 1
        verb = "created" if created else "updated"
        print(f"webhook {hook.get('id')} {verb}: project {project_id} -> {settings.webhook.url}")
        try:
            report = await learn(services, project_id)
        except LabelStudioError as exc:
            print(
                f"labelloop: the webhook is registered, but project {project_id}'s annotations "
                f"could not be read ({exc}); `labelloop serve` reads them at start and every "
                "label_studio.catch_up",
                file=sys.stderr,
            )
            return 1
    print(
        f"project {project_id} caught up: {report.changed} annotations learned, "
        f"{report.deleted} deleted"
    )
    return 0


def retrain(settings: Settings, args: argparse.Namespace) -> int:
    with _api(settings, args) as api:
        answer = api.post(f"/projects/{args.project}/train")
        if answer.status_code != 202:
            return _failed(answer)
        job_id = answer.json()["job_id"]
        print(f"job {job_id} queued for project {args.project}")
        if not args.wait:
            return 0
        last = ""
        while True:
            status = api.get(f"/projects/{args.project}")
            if status.status_code != 200:
                return _failed(status)
            job = next((j for j in status.json()["jobs"] if j["id"] == job_id), None)
            line = _job_line(job) if job else f"job {job_id}: not found"
            if line != last:
                print(line, flush=True)
                last = line
            if job is None or job["status"] in FINISHED:
                return 0 if job and job["status"] == "succeeded" else 1
            time.sleep(1.0)


def status(settings: Settings, args: argparse.Namespace) -> int:
    with _api(settings, args) as api:
        path = f"/projects/{args.project}" if args.project else "/projects"
        answer = api.get(path)
        if answer.status_code != 200:
            return _failed(answer)
        body = answer.json()
    if not args.project:
        for project in body["projects"]:
            print(
                f"project {project['id']} {project['title']!r}: "
                f"{project['annotations']} annotations, "
                f"active {project['active_version'] or '-'}"
            )
        return 0
    print(_project_text(body))
    return 0


def _project_text(body: dict[str, Any]) -> str:
    lines = [f"project {body['id']} {body['title']!r}"]
    if not body["supported"]:
        lines.append(f"  unsupported: {body['unsupported_reason']}")
    tags = body.get("trained_tags") or []
    if tags:
        lines.append(
            "  trained tags: "
            + ", ".join(f"{t['name']} ({'multiple' if t['multiple'] else 'single'})" for t in tags)
        )
    lines.append(
        f"  events {body['events']}, annotations {body['annotations']}, "
        f"changes since last job {body['changes_since_last_job']}"
    )
    model = body["active_model"]
    if model:
        metrics = model["metrics"] or {}
        accuracy = metrics.get("accuracy")
        shown = "n/a (too few labels)" if accuracy is None else f"{accuracy:.3f}"
        lines.append(
            f"  active model {model['version']}: trained on {model['trained_on']} labels, "
            f"held-out accuracy {shown}"
        )
    else:
        lines.append("  no model yet")
    for job in body["jobs"][:5]:
        lines.append("  " + _job_line(job))
    for failure in body["image_failures"][:5]:
        lines.append(f"  image of task {failure['task']} skipped: {failure['error']}")
    return "\n".join(lines)


def _job_line(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    stage = progress.get("stage")
    detail = ""
    if stage and job["status"] == "running":
        detail = f" {stage}"
        if "total" in progress:
            detail += f" {progress.get('done', 0)}/{progress['total']}"
    error = f": {job['error']}" if job.get("error") else ""
    version = f" -> {job['model_version']}" if job.get("model_version") else ""
    return f"job {job['id']} ({job['reason']}) {job['status']}{detail}{version}{error}"


def _server_url(settings: Settings, args: argparse.Namespace) -> str:
    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return getattr(args, "url", None) or f"http://{host}:{settings.server.port}"


def _api(settings: Settings, args: argparse.Namespace) -> httpx.Client:
    url = _server_url(settings, args)
    token = settings.server.api_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}  # "Bearer " alone is illegal
    return httpx.Client(base_url=url, headers=headers, timeout=30.0)


def _failed(answer: httpx.Response) -> int:
    try:
        message = answer.json().get("error", answer.text)
    except ValueError:
        message = answer.text
    print(f"labelloop: {answer.status_code} {message}", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="settings file (default: $LABELLOOP_CONFIG or ./settings.toml)"
    )
    parser = argparse.ArgumentParser(prog="labelloop", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(command=fn)
        return sub

    add("serve", serve, "run the webhook receiver, API, scheduler and worker").add_argument(
        "--no-worker", action="store_true", help="do not run jobs in this process"
    )
    add("worker", worker, "claim and run training jobs only")
    add("migrate", migrate, "upgrade the database to the newest schema")
    add(
        "register", register, "create or update the project's webhook in Label Studio"
    ).add_argument("--project", type=int, required=True)
    sub = add("retrain", retrain, "queue a training of a project")
    sub.add_argument("--project", type=int, required=True)
    sub.add_argument("--wait", action="store_true", help="follow the job until it ends")
    sub.add_argument("--url", help="labelloop's address (default: from [server])")
    sub = add("status", status, "show projects, or one project's models and jobs")
    sub.add_argument("--project", type=int)
    sub.add_argument("--url", help="labelloop's address (default: from [server])")
    return parser


if __name__ == "__main__":
    sys.exit(main())
