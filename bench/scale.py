"""Large projects: an incremental retrain's cost, from the call to the predictions in Label Studio.

A real Label Studio 1.23.2 (started as tests/e2e/conftest.py starts it: a fresh data directory,
legacy token, SSRF protection off) and a real ``labelloop serve`` (SQLite, ``weights = "none"``,
``image_size = 64``, so the forward pass is not what is measured). Per project size: tasks
pointing at a local static HTTP server of scikit-learn's digits rendered as 64 px PNGs (each
task's bytes unique, so nothing is shared through the embedding cache), 100 labels and a first
training, then ``--rounds`` rounds of +20 annotations (through Label Studio, so its webhooks
reach labelloop) and a manual retrain, each timed from ``POST /projects/{id}/train`` to its job
done (predictions pushed, the project's model_version set). Per round: the push's own time and
what it wrote (new, replaced, unchanged), and, measured apart right after, one full listing of
the project's tasks (what the pipeline's task snapshot costs until it reads the log instead).
At the end: the predictions Label Studio stores under labelloop's names.

``--epsilon`` instead measures, without Label Studio, how much a +20-label retrain moves the
predictions on digits (labels changed, score shifts), which is what EPSILON is chosen from.

``--ls-import-flag`` starts Label Studio with its memory-efficient prediction import turned on
(the feature flag the README's "Large projects" recommends): Label Studio 1.23.2 otherwise
recounts every task of the project on each import.

Usage: .venv/bin/python bench/scale.py [--sizes 1000,10000,50000] [--rounds 5] [--ls-import-flag]
       .venv/bin/python bench/scale.py --epsilon
Needs $LABELLOOP_TEST_LS_VENV (or .venv-ls) with label-studio installed.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.digits import digit_pngs  # noqa: E402
from service.jobs.predictions import LS_IMPORT_FLAG  # noqa: E402

LS_TOKEN = "labelloop-bench-token-0123456789"
API_TOKEN = "bench-api-token"
FIRST_LABELS = 100
STEP = 20
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    + "".join(f'<Choice value="{d}"/>' for d in range(10))
    + "</Choices></View>"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_png(png: bytes, index: int) -> bytes:
    """``png`` with a tEXt chunk naming ``index`` before IEND: same picture, its own bytes."""
    data = b"i\x00" + str(index).encode()
    chunk = len(data).to_bytes(4, "big") + b"tEXt" + data
    chunk += zlib.crc32(b"tEXt" + data).to_bytes(4, "big")
    return png[:-12] + chunk + png[-12:]


class ImageServer:
    """Serves /d/<i>.png: digit i mod 1797, with bytes unique to i."""

    def __init__(self, pngs: list[bytes]) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    index = int(self.path.removeprefix("/d/").removesuffix(".png"))
                except ValueError:
                    self.send_error(404)
                    return
                body = unique_png(server.pngs[index % len(server.pngs)], index)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.pngs = pngs
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def label_studio(
    root: Path, *, import_flag: bool = False
) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    venv = Path(os.environ.get("LABELLOOP_TEST_LS_VENV") or REPO / ".venv-ls")
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        raise SystemExit(f"no {exe}: set LABELLOOP_TEST_LS_VENV (scripts/test installs it)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LABELLOOP_"))}
    (root / "ls-data").mkdir()
    env.update(
        PATH=f"{exe.parent}{os.pathsep}{env.get('PATH', '')}",
        LABEL_STUDIO_USERNAME="admin@example.com", LABEL_STUDIO_PASSWORD="labelloop-bench-pw",
        LABEL_STUDIO_USER_TOKEN=LS_TOKEN, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_BASE_DATA_DIR=str(root / "ls-data"), LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false", SSRF_PROTECTION_ENABLED="false", ML_BLOCK_LOCAL_IP="false",
    )  # fmt: skip
    if import_flag:
        env[LS_IMPORT_FLAG] = "true"
    cmd = [str(exe), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1"]
    proc = start(cmd, env, root / "label-studio.log", root)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Token {LS_TOKEN}"},
        timeout=600.0,
    )  # fmt: skip
    wait_until(lambda: client.get("/health").json().get("status") == "UP", 300, "Label Studio")
    return proc, client


def labelloop(root: Path, ls_url: str) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    port = free_port()
    config = root / "settings.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\napi_token = "{API_TOKEN}"\n'
        f'[database]\nurl = "sqlite:///{root / "labelloop.db"}"\n'
        f'[label_studio]\nurl = "{ls_url}"\napi_key = "{LS_TOKEN}"\ncatch_up = ""\n'
        f'[webhook]\nurl = "http://127.0.0.1:{port}/webhook"\nsecret = "bench-secret"\n'
        "[worker]\nstale_after = 6\n"
        '[training]\nthreshold = 1000000\nweights = "none"\nimage_size = 64\ndevice = "cpu"\n'
    )
    exe = Path(sys.executable).parent / "labelloop"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    subprocess.run([str(exe), "migrate", "--config", str(config)], env=env, check=True)
    proc = start([str(exe), "serve", "--config", str(config)], env, root / "labelloop.log", root)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=60.0,
    )  # fmt: skip
    wait_until(lambda: client.get("/health").status_code == 200, 120, "labelloop serve")
    return proc, client


def task_ids(ls: httpx.Client, project: int) -> dict[int, int]:
    """Image index -> task id, for every task of the project."""
    found: dict[int, int] = {}
    page = 1
    while True:
        r = ls.get("/api/tasks/", params={"project": project, "page": page, "page_size": 5000})
        if r.status_code == 404:
            return found
        tasks = r.json()["tasks"]
        for task in tasks:
            found[int(task["data"]["image"].rsplit("/", 1)[1].removesuffix(".png"))] = task["id"]
        if len(tasks) < 5000:
            return found
        page += 1


def annotate(ls: httpx.Client, task_id: int, label: str) -> None:
    result = [{"from_name": "label", "to_name": "image", "type": "choices",
               "origin": "manual", "value": {"choices": [label]}}]  # fmt: skip
    r = ls.post(f"/api/tasks/{task_id}/annotations/", json={"result": result})
    r.raise_for_status()


def full_listing_seconds(ls: httpx.Client, project: int) -> float:
    """One pass over every task, 100 a page by id, as labelloop's snapshot lists them."""
    started, after = time.perf_counter(), 0
    while True:
        query = {"filters": {"conjunction": "and", "items": [{"filter": "filter:tasks:id",
                 "operator": "greater", "type": "Number", "value": after}]},
                 "ordering": ["tasks:id"]}  # fmt: skip
        r = ls.get("/api/tasks/", params={"project": project, "page": 1, "page_size": 100,
                                          "query": json.dumps(query)})  # fmt: skip
        tasks = r.json()["tasks"]
        if tasks:
            after = tasks[-1]["id"]
        if len(tasks) < 100:
            return time.perf_counter() - started


def retrain(ll: httpx.Client, project: int, timeout: float) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    job_id = ll.post(f"/projects/{project}/train").json()["job_id"]

    def finished() -> dict[str, Any] | None:
        jobs = ll.get(f"/projects/{project}").json()["jobs"]
        job = next((j for j in jobs if j["id"] == job_id), None)
        if job and job["status"] not in ("queued", "running"):
            return dict(job)
        return None

    job = wait_until(finished, timeout, f"job {job_id}", interval=0.1)
    return time.perf_counter() - started, job


def run_size(
    size: int, rounds: int, pngs: list[bytes], targets: list[str], import_flag: bool
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"labelloop-scale-{size}-"))
    images = ImageServer(pngs)
    ls_proc, ls = label_studio(root, import_flag=import_flag)
    ll_proc = None
    try:
        body = {"title": f"scale {size}", "label_config": LABEL_CONFIG}
        project = ls.post("/api/projects/", json=body).json()["id"]
        for start_at in range(0, size, 10_000):
            body = [{"image": f"{images.url}/d/{i}.png"}
                    for i in range(start_at, min(size, start_at + 10_000))]  # fmt: skip
            ls.post(f"/api/projects/{project}/import", json=body).raise_for_status()
        ids = task_ids(ls, project)
        assert len(ids) == size, (len(ids), size)
        ll_proc, ll = labelloop(root, str(ls.base_url))
        register = [str(Path(sys.executable).parent / "labelloop"), "register", "--project",
                    str(project), "--config", str(root / "settings.toml")]  # fmt: skip
        subprocess.run(register, check=True, capture_output=True)
        labeled = 0

        def label_more(n: int) -> None:
            nonlocal labeled
            for index in range(labeled, labeled + n):
                annotate(ls, ids[index], targets[index % len(targets)])
            labeled += n

        label_more(FIRST_LABELS)
        first_s, first = retrain(ll, project, 3600)
        rows = [("first", first_s, first)]
        for _ in range(rounds):
            label_more(STEP)
            seconds, job = retrain(ll, project, 1800)
            rows.append(("round", seconds, job))
        listing = statistics.median(full_listing_seconds(ls, project) for _ in range(3))
        versions = ls.get(f"/api/projects/{project}/model-versions/").json()
        status = ll.get(f"/projects/{project}").json()
        shown = ls.get(f"/api/projects/{project}/").json()["model_version"]
        name = status["active_model"]["label_studio_version"]
        return {"size": size, "rows": rows, "listing_s": listing, "versions": versions,
                "name": name, "model_version": shown}  # fmt: skip
    finally:
        if ll_proc is not None:
            stop(ll_proc)
        stop(ls_proc)
        images.httpd.shutdown()


def report(result: dict[str, Any]) -> None:
    size = result["size"]
    print(f"\n## {size} tasks (full task listing, measured apart: {result['listing_s']:.1f} s)")
    print("| run | call -> done (s) | push (s) | LS delete (s) | LS import (s) | written "
          "| unchanged | status |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for kind, seconds, job in result["rows"]:
        p = job.get("progress") or {}
        print(f"| {kind} | {seconds:.1f} | {p.get('push_seconds', nan):.1f} | "
              f"{p.get('delete_seconds', nan):.1f} | {p.get('import_seconds', nan):.1f} | "
              f"{p.get('pushed', '-')} | {p.get('unchanged', '-')} | {job['status']} "
              f"{job.get('model_version') or ''} |")  # fmt: skip
    rounds = [s for k, s, _ in result["rows"] if k == "round"]
    if rounds:
        print(f"median round: {statistics.median(rounds):.1f} s")
    held = sum(n for v, n in result["versions"].items() if v.startswith("labelloop"))
    print(f"Label Studio after {len(result['rows'])} versions: {result['versions']} "
          f"({held / size:.2f} predictions per task; project model_version "
          f"{result['model_version']!r}, labelloop's name {result['name']!r})")  # fmt: skip


def epsilon_study(rounds: int = 5, sampling: str = "least_confidence") -> None:
    """How far a +20-label retrain moves digits' predictions' scores under the ``sampling``
    rule (no Label Studio)."""
    import torch

    from service.vision.backbone import Backbone, BackboneSpec
    from service.vision.head import train_head
    from service.vision.images import decode_image, preprocess
    from service.vision.ranking import uncertainty_scores

    pngs, targets = digit_pngs()
    backbone = Backbone(BackboneSpec("resnet18", "none", 64), torch.device("cpu"))
    x = backbone.embed([preprocess(decode_image(p), 64) for p in pngs])
    ids = list(range(1, len(pngs) + 1))
    previous = None
    print("| labels | labels changed | |Δscore| median | p90 | > 0.02 | > 0.03 | > 0.05 |")
    print("|---|---|---|---|---|---|---|")
    for r in range(rounds + 1):
        n = FIRST_LABELS + STEP * r
        head = train_head(x[:n], targets[:n], ids[:n]).head
        probs = head.predict_proba(x[FIRST_LABELS + STEP * rounds :])
        scores, index = uncertainty_scores(probs, sampling), probs.argmax(dim=1)
        if previous is not None:
            changed = (index != previous[1]).float().mean().item()
            same = index == previous[1]
            delta = (scores[same] - previous[0][same]).abs()
            q = torch.quantile(delta, torch.tensor([0.5, 0.9])).tolist()
            over = [(delta > e).float().mean().item() for e in (0.02, 0.03, 0.05)]
            print(f"| {n} | {changed:.1%} | {q[0]:.3f} | {q[1]:.3f} | "
                  + " | ".join(f"{o:.1%}" for o in over) + " |")  # fmt: skip
        previous = (scores, index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epsilon", action="store_true")
    parser.add_argument("--ls-import-flag", action="store_true")
    parser.add_argument("--sampling", default="least_confidence", help="--epsilon's score rule")
    args = parser.parse_args()
    if args.epsilon:
        epsilon_study(args.rounds, args.sampling)
        return
    pngs, targets = digit_pngs()
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"\n(Label Studio import flag: {'on' if args.ls_import_flag else 'off'})")
        report(run_size(size, args.rounds, pngs, targets, args.ls_import_flag))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
