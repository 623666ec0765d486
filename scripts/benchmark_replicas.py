"""Requests per second and click latency with one and with two replicas behind nginx, and
what a failover costs (docs/deployment.md).

    .venv/bin/python scripts/benchmark_replicas.py [--users 4] [--clicks 6] [--model small|medsam2]

Each simulated user clicks on a study of its own (a first click, then corrections that add a
point each, all prompts resent as the clients do), all users at once; the same load runs
against nginx with 1 replica, then with 2 on a shared studies folder and model folder. The
studies are phantoms of one size; with 2 replicas the users' studies are picked from a pool so
that the consistent hash gives each replica an equal share (with a handful of studies the hash
alone may put them all on one replica, and the run would measure one replica twice). Then
the replica holding user 0's study is killed (kill -9) and started again as
``scripts/run_replicas.sh`` does (after 5 s, on its port, at nice 10, its compiled runtime
from the cache); user 0 clicks at once and every 2 s until it is back: the failover cost is
the time from the kill to the first answer, and the slowest click while the replica restarts. ``--model small``: the tests' tiny
SAM 2 (plumbing and proxy cost); ``medsam2``: MedSAM2's preset (SAM 2.1 tiny, 512 px) with
random weights (a clinical-size network, masks meaningless). Needs nginx (Debian package).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.nginx import RunningNginx  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

SHAPE = (96, 96, 24)


def write_studies(folder: Path, count: int) -> list:
    from tests.support.trained_small_model import AFFINE, phantom

    folder.mkdir(parents=True)
    for n in range(count):
        array, _ = phantom(100 + n, shape=SHAPE)
        nib.save(nib.Nifti1Image(np.round(array).astype(np.int16), AFFINE), str(folder / f"study_{n:02d}.nii.gz"))
    return [f"study_{n:02d}" for n in range(count)]


CLICK_TIMEOUT_S = 600


def click(url: str, study: str, user: str, points: list) -> tuple:
    params = {"foreground": points, "background": [], "client_id": user, "label": "lesion"}
    began = time.perf_counter()
    answer = requests.post(f"{url}/infer/medsam2_3d", params={"image": study, "output": "json"},
                           files={"params": (None, json.dumps(params))}, timeout=CLICK_TIMEOUT_S)
    seconds = time.perf_counter() - began
    answer.raise_for_status()
    return seconds, answer.headers.get("X-MedSAM2-Replica"), answer.json()


def user_points(n: int) -> list:
    cx, cy, cz = SHAPE[0] // 2, SHAPE[1] // 2, SHAPE[2] // 2
    return [[cx + (n % 3) - 1, cy + (n // 3) % 3 - 1, cz + (n % 5) - 2]]


def run_load(url: str, studies: list, clicks: int) -> dict:
    latencies, first, replicas, errors = [], [], {}, []
    lock = threading.Lock()

    def user(n: int) -> None:
        points = []
        try:
            for c in range(clicks):
                points = points + user_points(n + c)
                seconds, replica, _ = click(url, studies[n], f"user-{n}", points)
                with lock:
                    (first if c == 0 else latencies).append(seconds)
                    replicas.setdefault(studies[n], replica)
        except Exception as err:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"user {n}: {err}")

    threads = [threading.Thread(target=user, args=(n,)) for n in range(len(studies))]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    count = len(first) + len(latencies)
    return {"requests": count, "wall_s": round(wall, 2), "requests_per_s": round(count / wall, 3),
            "first_click_p50_s": _pct(first, 50), "correction_p50_s": _pct(latencies, 50),
            "correction_p95_s": _pct(latencies, 95), "errors": errors, "replica_of_study": replicas}


def _pct(values: list, q: int):
    if not values:
        return None
    return round(float(np.percentile(values, q)), 3)


def replica_conf(n: int, model_conf: dict, folder: Path) -> dict:
    return {**model_conf, "model_dir": folder / "model", "replica_name": f"r{n + 1}",
            "trainer": "true" if n == 0 else "false", "trainer_name": "r1", "encode_ahead": "false"}


def start_replicas(count: int, studies_dir: Path, model_conf: dict, folder: Path) -> list:
    servers: list = [None] * count

    def start(n: int) -> None:
        servers[n] = RunningServer(studies_dir, replica_conf(n, model_conf, folder), folder / f"r{n + 1}.log",
                                   timeout=600)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not all(servers):
        raise RuntimeError(f"a replica did not start; logs in {folder}")
    return servers


def balanced(url: str, pool: list, users: int) -> list:
    """``users`` studies of ``pool``, taken in turn from each replica's share (as the hash places them)."""
    by_replica: dict = {}
    for study in pool:
        answer = requests.get(f"{url}/datastore/image/info", params={"image": study}, timeout=60)
        answer.raise_for_status()
        by_replica.setdefault(answer.headers.get("X-MedSAM2-Replica"), []).append(study)
    shares = list(by_replica.values())
    chosen = []
    while len(chosen) < users and any(shares):
        for share in shares:
            if share and len(chosen) < users:
                chosen.append(share.pop(0))
    return chosen


def measure(count: int, args, studies_dir: Path, pool: list, model_conf: dict, work: Path) -> dict:
    folder = work / f"replicas_{count}"
    (folder / "model").mkdir(parents=True)
    servers = start_replicas(count, studies_dir, model_conf, folder)
    nginx = RunningNginx(folder / "nginx", [f"r{n + 1}=127.0.0.1:{s.port}" for n, s in enumerate(servers)])
    try:
        studies = pool[: args.users] if count == 1 else balanced(nginx.url, pool, args.users)
        run_load(nginx.url, studies, 1)  # warm-up: every study opened once, as a viewer would
        result = run_load(nginx.url, studies, args.clicks)
        result["replicas"] = count
        if count > 1:
            result["failover"] = failover(nginx.url, servers, studies[0], result["replica_of_study"][studies[0]],
                                          restart=lambda victim: restart(victim, servers, studies_dir, model_conf,
                                                                         folder))
        return result
    finally:
        nginx.stop()
        for server in servers:
            server.stop()


RESTART_DELAY_S = 5  # scripts/run_replicas.sh's default RESTART_S


def restart(victim, servers: list, studies_dir: Path, model_conf: dict, folder: Path):
    """Start the killed replica again as run_replicas.sh does: after its delay, on its port, at nice 10
    (renice back to 0 is the script's business once it answers; here it stays at 10 to the end)."""
    n = servers.index(victim)
    time.sleep(RESTART_DELAY_S)
    servers[n] = RunningServer(studies_dir, replica_conf(n, model_conf, folder), folder / f"r{n + 1}-restart.log",
                               timeout=600, port=victim.port, nice=10)
    return servers[n]


def failover(url: str, servers: list, study: str, replica: str, restart=None) -> dict:
    """kill -9 the replica of ``study``; its user clicks at once and then every 2 s while the
    replica restarts (``restart``, as an operator's supervisor does) until it answers again."""
    points = user_points(0) + user_points(1)
    before, _, _ = click(url, study, "user-0", points)  # a correction on the live replica, for comparison
    victim = next(s for s in servers if requests.get(f"{s.url}/info/", timeout=30).json()["medsam2"]["replica"][
        "name"] == replica)
    victim.kill()
    killed = time.perf_counter()
    restarted = {}
    restarter = None
    if restart is not None:
        def run():
            started = time.perf_counter()
            restarted["server"] = restart(victim)
            restarted["back_after_s"] = round(time.perf_counter() - killed, 1)
            restarted["start_s"] = round(time.perf_counter() - started - RESTART_DELAY_S, 1)

        restarter = threading.Thread(target=run)
        restarter.start()
    seconds, moved_to, result = click(url, study, "user-0", points)
    first_answer_s = round(time.perf_counter() - killed, 3)
    during, back = [], None
    while restarter is not None and restarter.is_alive():
        time.sleep(2)
        points = points + user_points(len(points) + 2)  # a new correction each time (no answer is reused)
        during.append(round(click(url, study, "user-0", points)[0], 3))
    if restarter is not None:
        restarter.join()
        time.sleep(11)  # nginx tries the replica again after fail_timeout (10 s): the study goes back to it
        points = points + user_points(len(points) + 2)
        back, back_on, _ = click(url, study, "user-0", points)
    return {"killed": replica, "moved_to": moved_to, "kill_to_answer_s": first_answer_s,
            "click_after_failover_s": round(seconds, 3), "same_click_before_s": round(before, 3),
            "clicks_while_restarting_s": during, "max_click_while_restarting_s": max(during) if during else None,
            "replica_back_after_s": restarted.get("back_after_s"), "replica_start_s": restarted.get("start_s"),
            "click_after_return_s": round(back, 3) if back is not None else None,
            "answered_after_return_by": back_on if back is not None else None,
            "session_started": result["session"]["started"], "warning": result.get("warning")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=6, help="clicks per user: the first, then corrections")
    parser.add_argument("--model", choices=("small", "medsam2"), default="small")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_replicas_"))
    try:
        pool = write_studies(work / "studies", 4 * args.users)  # 2 replicas: the users' studies come from here
        if args.model == "small":
            from tests.support.small_model import write_small_checkpoint, write_small_config

            model_conf = {"model_config": write_small_config(work / "small.yaml"),
                          "checkpoint": write_small_checkpoint(work / "small.pt")}
        else:
            model_conf = {"model": "medsam2", "checkpoint": "random", "download": "false"}
        results = [measure(n, args, work / "studies", pool, model_conf, work) for n in (1, 2)]
        report = {"machine": f"{cpu_name()}, {_cores()} cores", "users": args.users,
                  "clicks_per_user": args.clicks, "model": args.model, "results": results}
        print(json.dumps(report, indent=1))
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
