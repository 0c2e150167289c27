"""In-process checks of the API: schemathesis fuzzes every operation of the OpenAPI document (no input may
cause a 5xx), and upload limits answer 413."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")
schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES = 25  # per operation: ~15 operations, a few seconds in all (in-process, no sockets)


@pytest.fixture(scope="module")
def app_and_keys(tmp_path_factory):
    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key

    cfg = ServerConfig(storage=str(tmp_path_factory.mktemp("fuzz")), steps=2)
    app = create_app(cfg)
    admin, _ = create_key(app.state.db, "fuzz-admin", admin=True)
    return app, admin


@pytest.fixture
def ieee_subnormals():
    # Trainers flush denormal floats for speed (train.common.pick_device: global CPU state); hypothesis
    # refuses to generate floats while they are flushed, so lift it for this test.
    import torch

    torch.set_flush_denormal(False)
    yield


def test_no_input_makes_a_server_error(app_and_keys, ieee_subnormals):
    app, admin = app_and_keys
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 12
    failures, answered = [], []
    for op in ops:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            for headers in ({"Authorization": f"Bearer {admin}"}, {}):
                r = case.call(headers=headers)
                answered.append(r.status_code)
                if r.status_code >= 500:
                    failures.append(f"{op.method.upper()} {op.path}: {r.status_code} {r.text[:200]}")
                    return
                if r.status_code >= 400:  # every error is OpenAI-shaped
                    body = r.json()
                    assert set(body["error"]) == {"message", "type", "param", "code"}, (op.path, body)

        check()
    assert not failures, "\n".join(failures[:10])
    assert sum(s < 300 for s in answered) >= 5 * len(ops)  # the fuzzer got past validation, not just 400s


def test_oversized_upload_answers_413(tmp_path):
    import numpy as np
    from fastapi.testclient import TestClient

    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key
    from moviola.video_io import encode_image

    app = create_app(ServerConfig(storage=str(tmp_path), max_image_mb=0.01))
    token, _ = create_key(app.state.db, "big")
    png = encode_image(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    assert len(png) > 0.01 * 2**20
    with TestClient(app) as client:
        r = client.post("/v1/videos", headers={"Authorization": f"Bearer {token}"},
                        data={"prompt": "a red circle", "size": "64x64", "seconds": "1"},
                        files={"input_reference": ("big.png", png, "image/png")})
    assert r.status_code == 413 and r.json()["error"]["param"] == "input_reference"
    assert not any((tmp_path / "uploads").rglob("*.png"))  # nothing stored for a refused request
