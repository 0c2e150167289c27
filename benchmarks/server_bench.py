"""The server's targets, measured on loopback with the official openai SDK (issue 7):

1. round trip: ``create_and_poll`` of a 2 s 64x64 clip with the default model's own sampler settings and
   one worker (target < 15 s), timed from create to the completed Video;
2. load: 200 creates from 20 concurrent clients while the worker is busy (target: none lost or doubled,
   p99 create latency < 200 ms), client-side latency and the server's own time from the audit log;
3. revocation: a key revoked through the admin API fails on its very next request;
4. SIGKILL: a second worker takes over a killed worker's job (target: completed within lease + 5 s).

    PYTHONPATH=src python benchmarks/server_bench.py                  # all four, JSON on stdout
    PYTHONPATH=src python benchmarks/server_bench.py --steps 4 --lease 3 --skip roundtrip

The worker runs with one CPU thread (--threads), the API in its own process, the clients in this one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore", category=DeprecationWarning)

# The load test it reuses would skip without these, as a pytest exception: say so plainly instead.
for _name in ("fastapi", "openai"):
    if importlib.util.find_spec(_name) is None:
        sys.exit(f"server_bench needs the server and the openai SDK ({_name} is missing): pip install -e '.[test]'")

import server_stack  # noqa: E402
from test_server_load import run_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="sampler steps (0: the model's default)")
    ap.add_argument("--lease", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", action="append", default=[], help="roundtrip, load, revocation or sigkill")
    args = ap.parse_args()

    from moviola import DEFAULT_MODEL_DIR
    from moviola.server.generate import ModelInfo

    steps = args.steps or ModelInfo.from_dir(DEFAULT_MODEL_DIR).steps
    stack = server_stack.Stack(Path(tempfile.mkdtemp(prefix="moviola-bench-")), steps=steps, lease_seconds=args.lease)
    stack.cleanup = True
    out: dict = {"steps": steps, "load_average_at_start": os.getloadavg()}
    try:
        t0 = time.perf_counter()
        w = stack.start_worker()
        stack.start_api()
        stack.wait_ready(w)
        out["startup_s"] = round(time.perf_counter() - t0, 1)
        token = stack.key("bench")
        c = stack.client(token)

        if "roundtrip" not in args.skip:
            times = []
            for i in range(args.rounds):
                t0 = time.perf_counter()
                v = c.videos.create_and_poll(prompt="a small red circle moves right on a black background",
                                             size="64x64", seconds="2")
                times.append(time.perf_counter() - t0)
                assert v.status == "completed", v.error
            out["roundtrip_s"] = {"each": [round(t, 2) for t in times], "median": round(statistics.median(times), 2),
                                  "generation_s": v.moviola["generation_seconds"]}

        if "load" not in args.skip:
            busy = c.videos.create(prompt="a large blue circle bounces", size="64x64", seconds="4")
            server_stack.wait_for(lambda: c.videos.retrieve(busy.id).status == "in_progress", 300, 0.05, "busy")
            ids, lat, errors = run_load(stack, token)
            listed = [v.id for v in c.videos.list(limit=100)]
            lat.sort()
            ms = sorted(r["ms"] for r in stack.database().query(
                "SELECT ms FROM audit WHERE action = 'videos.create' AND video_id IN (%s)" % ",".join("?" * len(ids)),
                ids))
            q = lambda xs, f: round(1000 * xs[int(f * (len(xs) - 1))], 1)  # noqa: E731
            out["load"] = {"requests": 200, "created": len(ids), "errors": len(errors),
                           "duplicates": len(ids) - len(set(ids)),
                           "lost": len(set(ids) - set(listed)), "worker_busy": c.videos.retrieve(busy.id).status,
                           "client_ms": {"p50": q(lat, 0.5), "p99": q(lat, 0.99), "max": q(lat, 1.0)},
                           "server_ms": {"p50": round(ms[len(ms) // 2], 1), "p99": round(ms[int(0.99 * (len(ms) - 1))], 1)}}
            for vid in ids + [busy.id]:
                c.videos.delete(vid)

        if "revocation" not in args.skip:
            admin = stack.client(stack.key("bench-admin", admin=True))
            made = admin.post("/admin/keys", body={"name": "bench-revoked"}, cast_to=object)
            victim = stack.client(made["key"])
            victim.videos.list()
            admin.post("/admin/keys/bench-revoked/revoke", cast_to=object)
            t0 = time.perf_counter()
            try:
                victim.videos.list()
                status = 200
            except Exception as e:  # openai.AuthenticationError
                status = getattr(e, "status_code", None)
            out["revocation"] = {"next_request_status": status, "ms": round(1000 * (time.perf_counter() - t0), 1)}

        if "sigkill" not in args.skip:
            w2 = stack.start_worker()
            stack.wait_ready(w2)
            db = stack.database()
            v = c.videos.create(prompt="a large green triangle falls on a gray background", size="64x64", seconds="2")
            row = server_stack.wait_for(lambda: (r := db.one("SELECT * FROM jobs WHERE id = ?", (v.id,)))["progress"] > 0
                                        and r, 300, 0.02, "start")
            pid = int(row["lease_owner"].split(":")[1])
            os.kill(pid, signal.SIGKILL)
            t_kill = time.time()
            done = server_stack.wait_for(lambda: (x := c.videos.retrieve(v.id)).status in ("completed", "failed") and x,
                                         300, 0.05, "take-over")
            row = db.one("SELECT * FROM jobs WHERE id = ?", (v.id,))
            out["sigkill"] = {"status": done.status, "lease_s": args.lease,
                              "taken_over_after_s": round(row["claimed_at"] - t_kill, 2),
                              "completed_after_s": round(row["completed_at"] - t_kill, 2),
                              "generation_s": round(row["gen_seconds"], 2)}
    finally:
        stack.stop()
    out["load_average_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
