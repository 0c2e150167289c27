"""A bounded load test on loopback: 20 clients send 200 creates while the worker is busy; every job is
accounted for exactly once. (Latency targets are measured by benchmarks/server_bench.py, not asserted.)"""

from __future__ import annotations

import threading
import time

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai SDK: pip install -e '.[test]'")
pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")

import server_stack  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CLIENTS, PER_CLIENT = 20, 10


def run_load(stack, token, clients=CLIENTS, per_client=PER_CLIENT):
    """Each client thread sends its creates back to back; returns (ids in order made, latencies in s, errors)."""
    ids, lat, errors, lock = [], [], [], threading.Lock()
    start = threading.Barrier(clients)

    def client(n):
        c = stack.client(token, timeout=30.0)
        start.wait()
        for i in range(per_client):
            t0 = time.perf_counter()
            try:
                v = c.videos.create(prompt=f"a small red circle moves right {n}-{i}", size="64x64", seconds="1")
            except openai.APIError as e:
                with lock:
                    errors.append(repr(e))
                continue
            dt = time.perf_counter() - t0
            with lock:
                ids.append(v.id)
                lat.append(dt)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return ids, lat, errors


def test_200_creates_from_20_clients_none_lost_or_doubled():
    stack = server_stack.shared()
    token = stack.key("load")
    c = stack.client(token)
    busy = c.videos.create(prompt="a large blue circle bounces", size="64x64", seconds="2")
    server_stack.wait_for(lambda: c.videos.retrieve(busy.id).status != "queued", 300, 0.05, "the worker to start")
    ids, lat, errors = run_load(stack, token)
    try:
        assert errors == []
        assert len(ids) == CLIENTS * PER_CLIENT and len(set(ids)) == len(ids)
        listed = [v.id for v in c.videos.list(limit=100)]  # three pages
        assert len(listed) == len(set(listed)) == len(ids) + 1
        assert set(listed) == set(ids) | {busy.id}
        lat.sort()
        p50, p99 = lat[len(lat) // 2], lat[int(0.99 * (len(lat) - 1))]
        print(f"create latency over {len(lat)} requests: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
              f"max {lat[-1] * 1000:.0f} ms")
        audit = stack.database().query("SELECT COUNT(*) AS n FROM audit WHERE action = 'videos.create' AND "
                                       "status = 200 AND video_id IN (SELECT id FROM jobs WHERE key_id = "
                                       "(SELECT key_id FROM jobs WHERE id = ?))", (busy.id,))
        assert audit[0]["n"] == len(ids) + 1  # every request in the audit log
    finally:
        for vid in ids:  # cancel the queue so later tests do not wait behind it
            c.videos.delete(vid)
    assert [v.id for v in c.videos.list()] == [busy.id]
