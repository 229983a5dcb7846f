"""Resident memory of a worker across jobs: peak during each, and what stays after.

One process, as in ``labelloop serve``: the in-memory fake Label Studio serves scikit-learn's
digits as PNGs, a real SQLite database stores everything, and the service's own Worker runs
``--rounds`` rounds of a head retrain then a fine-tune (resnet18, ``weights = "none"``), each
on ``--labels`` labeled and ``--unlabeled`` unlabeled tasks. Between rounds ``--new`` more
labeled tasks arrive, so each round has images the worker has not seen.

RSS is read from /proc/self/status: VmRSS sampled every 10 ms while a job runs (its peak; the
kernel's VmHWM, reset through /proc/self/clear_refs before each job, is shown when it works),
and after the job returns. RssAnon (the heap: tensors, Python objects, malloc's arenas) is
what the worker owns; RssFile is mapped files (torch's shared libraries, mostly), which the
kernel shares and can reclaim.

``--default-malloc`` skips ``tune_malloc`` (two arenas, a fixed mmap threshold), which
``labelloop serve`` and ``worker`` call first. ``--no-release`` turns off what the worker
does after each job (service/jobs/memory.py), to show what it is worth.

Usage: .venv/bin/python bench/memory.py [--labels 300] [--unlabeled 100] [--new 100]
       [--size 224] [--epochs 1] [--rounds 2] [--threads 2] [--no-release] [--default-malloc]
"""

import argparse
import asyncio
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.digits import digit_pngs
from service.context import open_services
from service.jobs import worker as worker_module
from service.jobs.memory import tune_malloc
from service.jobs.worker import Worker
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from storage import jobs
from storage.migrate import upgrade
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, annotate

MB = 2**20


def status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) * 1024
    return values


class Sampler:
    """The highest VmRSS seen while a block runs (every 10 ms, on a thread of its own)."""

    def __enter__(self) -> "Sampler":
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.peak = status()["VmRSS"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, status()["VmRSS"])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm = status()["VmHWM"] if self.hwm_reset else None


async def run_job(services: Any, worker: Worker, kind: str) -> dict[str, Any]:
    with services.engine.begin() as conn:
        job_id, _ = jobs.enqueue(conn, 1, "manual", kind=kind)
    start = time.perf_counter()
    with Sampler() as sampler:
        await worker.run_until_idle()
    seconds = time.perf_counter() - start
    after = status()
    with services.engine.begin() as conn:
        # By id: a first training learns the project and queues a push of its own.
        job = next(j for j in jobs.recent(conn, 1) if j.id == job_id)
    assert job.status == "succeeded", (job.status, job.error)
    return {
        "kind": kind,
        "seconds": seconds,
        "peak": sampler.peak,
        "hwm": sampler.hwm,
        "after": after["VmRSS"],
        "anon": after["RssAnon"],
        "file": after["RssFile"],
    }


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    needed = args.labels + args.unlabeled + args.new * (args.rounds - 1)
    pngs, labels = digit_pngs(needed)
    choices = "".join(f'<Choice value="{d}"/>' for d in range(10))
    fake = FakeLabelStudio(
        label_config='<View><Image name="image" value="$image"/>'
        f'<Choices name="label" toName="image">{choices}</Choices></View>'
    )
    stamp = "2026-11-29T10:00:00Z"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        settings = Settings(
            database=DatabaseSettings(url=url),
            label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
            training=TrainingSettings(
                threshold=10**6,
                weights="none",
                image_size=args.size,
                device="cpu",
                finetune_epochs=args.epochs,
            ),
        )
        async with open_services(settings, transport=fake.transport()) as services:
            worker = Worker(services)
            torch.set_num_threads(args.threads)
            gc.collect()
            start = status()
            print(
                f"started: RSS {start['VmRSS'] / MB:.0f} MB (anon {start['RssAnon'] / MB:.0f}, "
                f"file {start['RssFile'] / MB:.0f})",
                flush=True,
            )
            first = args.labels + args.unlabeled
            for task_id in range(1, first + 1):
                fake.add_task(task_id, pngs[task_id - 1])
            new = list(range(1, args.labels + 1))
            labeled = 0
            for round_ in range(args.rounds):
                if round_:
                    low = first + (round_ - 1) * args.new + 1
                    new = list(range(low, low + args.new))
                    for task_id in new:
                        fake.add_task(task_id, pngs[task_id - 1])
                annotate(services, *[(t, t, labels[t - 1], stamp) for t in new], fake=fake)
                labeled += len(new)
                for kind in ("train", "finetune"):
                    result = await run_job(services, worker, kind)
                    result["round"] = round_ + 1
                    result["labels"] = labeled
                    results.append(result)
                    print(line(result), flush=True)
            await asyncio.sleep(2)
            idle = status()
            results.append({"kind": "idle 2 s later", "after": idle["VmRSS"]})
            print(
                f"idle 2 s after the last job: RSS {idle['VmRSS'] / MB:.0f} MB "
                f"(anon {idle['RssAnon'] / MB:.0f}, file {idle['RssFile'] / MB:.0f})",
                flush=True,
            )
    return results


def line(result: dict[str, Any]) -> str:
    hwm = "-" if result["hwm"] is None else f"{result['hwm'] / MB:.0f}"
    return (
        f"| {result['round']} | {result['kind']} | {result['labels']} | {result['seconds']:.1f} s "
        f"| {result['peak'] / MB:.0f} | {hwm} | {result['after'] / MB:.0f} "
        f"| {result['anon'] / MB:.0f} | {result['file'] / MB:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--unlabeled", type=int, default=100)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-release", action="store_true")
    parser.add_argument(
        "--default-malloc", action="store_true", help="skip tune_malloc (as serve calls it)"
    )
    args = parser.parse_args()
    if not args.default_malloc:
        tune_malloc()
    if args.no_release and hasattr(worker_module, "release_memory"):
        worker_module.release_memory = lambda: None  # type: ignore[attr-defined]
    print(
        f"torch {torch.__version__}, {args.threads} threads, resnet18 weights=none "
        f"{args.size} px, {args.epochs} epoch(s), release after jobs: {not args.no_release}"
    )
    print("| round | job | labels | time | peak RSS MB | VmHWM MB | after MB | anon | file |")
    print("|---|---|---|---|---|---|---|---|---|")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
