"""Keys: hashed storage, revocation on the very next request, isolation, quotas, rate limits, admin API, CLI."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai SDK: pip install -e '.[test]'")
pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")

import server_stack  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def stack():
    return server_stack.shared()


def _create(c, **kw):
    return c.videos.create(prompt="a small red circle moves left", size="64x64", seconds=kw.pop("seconds", "1"), **kw)


def test_keys_are_stored_hashed(stack):
    from moviola.server.keys import hash_key

    token = stack.key("hashed")
    db = stack.database()
    row = db.one("SELECT * FROM keys WHERE hash = ?", (hash_key(token),))
    assert row is not None and token not in str(row)
    assert not any(token in str(r) for r in db.query("SELECT * FROM keys"))
    raw = b"".join(p.read_bytes() for p in stack.storage.glob("moviola.db*"))
    assert token.encode() not in raw


def test_revocation_takes_effect_on_the_next_request(stack):
    admin = stack.client(stack.key("root", admin=True))
    made = admin.post("/admin/keys", body={"name": "soon-revoked"}, cast_to=object)
    c = stack.client(made["key"])
    v = _create(c)
    assert c.videos.retrieve(v.id).id == v.id
    revoked = admin.post("/admin/keys/soon-revoked/revoke", cast_to=object)
    assert revoked["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError, match="revoked"):  # the very next request
        c.videos.retrieve(v.id)
    with pytest.raises(openai.AuthenticationError):
        _create(c)
    names = {k["name"]: k for k in admin.get("/admin/keys", cast_to=object)["data"]}
    assert names["soon-revoked"]["revoked_at"] and "hash" not in names["soon-revoked"]
    with pytest.raises(openai.BadRequestError, match="already exists"):
        admin.post("/admin/keys", body={"name": "soon-revoked"}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        admin.post("/admin/keys/nobody/revoke", cast_to=object)
    stack.database().execute("DELETE FROM jobs WHERE id = ?", (v.id,))  # not for the shared worker


def test_each_key_sees_only_its_own_videos(stack):
    a, b = stack.client(stack.key("alice")), stack.client(stack.key("bob"))
    va = _create(a)
    try:
        for call in (lambda: b.videos.retrieve(va.id), lambda: b.videos.download_content(va.id),
                     lambda: b.videos.delete(va.id), lambda: b.videos.remix(va.id, prompt="mine now"),
                     lambda: b.videos.extend(prompt="x", seconds="1", video=openai.omit,
                                                 extra_body={"video": {"id": va.id}})):
            with pytest.raises(openai.NotFoundError):
                call()
        assert [v.id for v in b.videos.list()] == []
        with pytest.raises(openai.BadRequestError):  # another key's id is no cursor either
            b.videos.list(after=va.id)
        assert a.videos.retrieve(va.id).id == va.id  # untouched by bob's attempts
    finally:
        a.videos.delete(va.id)


def test_rate_limit_answers_429_with_retry_after(stack):
    c = stack.client(stack.key("rated", rate_per_minute=2))
    ids = [_create(c).id, _create(c).id]
    with pytest.raises(openai.RateLimitError) as e:
        _create(c)
    assert e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    assert len(list(c.videos.list())) == 2  # the refused request made nothing
    assert c.videos.retrieve(ids[0]).id == ids[0]  # reads are not rate limited
    for i in ids:
        c.videos.delete(i)
    with pytest.raises(openai.RateLimitError):  # deleting does not give the requests back
        _create(c)


def test_quota_answers_429_with_retry_after(stack):
    c = stack.client(stack.key("quota", quota_seconds_per_day=3))
    first = _create(c, seconds="2")
    with pytest.raises(openai.RateLimitError) as e:
        _create(c, seconds="2")
    assert e.value.code == "insufficient_quota" and "3 video seconds" in str(e.value)
    assert int(e.value.response.headers["retry-after"]) > 3600  # the 2 s job leaves the window in a day
    second = _create(c, seconds="1")  # what is left of the quota is still usable
    for v in (first, second):
        c.videos.delete(v.id)
    with pytest.raises(openai.BadRequestError) as e:  # more than the whole quota: no wait would help
        _create(c, seconds="4")
    assert e.value.code == "quota_too_small" and "whole daily quota of 3 s" in str(e.value)


def test_keys_cli(tmp_path, capsys):
    from moviola.cli import main

    def cli(*args):
        capsys.readouterr()
        rc = main(["keys", *args, "--storage", str(tmp_path)])
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, err = cli("create", "--name", "carol", "--rate-per-minute", "5")
    assert rc == 0, err
    token = out.strip()
    assert token.startswith("mvl-") and len(token) > 40 and "only time" in err
    rc, _, err = cli("create", "--name", "carol")
    assert rc == 2 and "already exists" in err
    assert cli("revoke", "carol")[0] == 0
    rc, out, _ = cli("list")
    assert rc == 0 and "carol" in out and "revoked" in out and token not in out
    rc, _, err = cli("revoke", "dave")
    assert rc == 2 and "no key named 'dave'" in err
    rc, _, err = cli("create", "--name", "x y")
    assert rc == 2 and "key name" in err
    rc = main(["keys", "list", "--db", "postgresql://nobody@127.0.0.1:1/none"])
    assert rc == 2 and "cannot connect" in capsys.readouterr().err


def test_serve_and_worker_name_an_unreachable_database(tmp_path, capsys):
    """Every server verb turns a database it cannot use into one clear line (exit 2), not a traceback."""
    from moviola.cli import main

    url = "postgresql://nobody@127.0.0.1:1/none"
    for verb in (["worker", "--threads", "1"], ["serve", "--port", "1"]):
        capsys.readouterr()
        rc = main([*verb, "--storage", str(tmp_path), "--db", url])
        err = capsys.readouterr().err
        assert rc == 2 and "cannot connect" in err and "Traceback" not in err, (verb, err)
    (tmp_path / "garbage.db").write_text("not a database")
    for argv, needle in [(["--db", f"sqlite:///{tmp_path / 'garbage.db'}"], "is --db a Moviola database"),
                         (["--db", "foo://bar"], "unknown database URL scheme 'foo://'"),
                         (["--storage", str(tmp_path / "garbage.db")], "--storage must be a folder")]:
        rc = main(["keys", "list", "--storage", str(tmp_path / "st"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (argv, err)


def test_the_key_is_checked_before_the_body(stack):
    """A request without a valid key gets 401 whatever its body (malformed JSON, garbage multipart), and the
    admin API too; with a key, a malformed body is a 400 saying so, and a form endpoint sent JSON says it takes
    multipart/form-data instead of "missing prompt"."""
    import json
    import urllib.error
    import urllib.request

    def call(path, data, content_type, token=None):
        req = urllib.request.Request(stack.base_url + path, data=data, method="POST",
                                     headers={"Content-Type": content_type,
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    admin = stack.client(stack.key("gate-root", admin=True))
    revoked = admin.post("/admin/keys", body={"name": "gate-revoked"}, cast_to=object)["key"]
    admin.post("/admin/keys/gate-revoked/revoke", cast_to=object)
    for token in (None, "sk-not-a-key", revoked):
        for path, data, ctype in [("/videos/video_x/remix", b'{"prompt":', "application/json"),
                                  ("/videos", b"garbage", "multipart/form-data; boundary=xyz"),
                                  ("/admin/keys", b"{bad", "application/json")]:
            status, body = call(path, data, ctype, token)
            assert status == 401 and body["error"]["code"] == "invalid_api_key", (token, path, body)
    token = stack.key("gate-user")
    status, body = call("/videos/video_x/remix", b'{"prompt":', "application/json", token)
    assert status == 400 and "not valid JSON" in body["error"]["message"] and body["error"]["param"] is None
    status, body = call("/videos", json.dumps({"prompt": "a red circle"}).encode(), "application/json", token)
    assert status == 400 and "takes multipart/form-data, not application/json" in body["error"]["message"]


def test_key_names_and_limits_the_database_cannot_hold_are_refused(tmp_path):
    """A name ending in a newline (listed like the name without it), an infinite quota (stored, then every
    listing of keys a 500) and a rate past the database's integer are refused by name, and nothing is made."""
    from moviola.server.db import Database
    from moviola.server.keys import KeyProblem, create_key, list_keys

    db = Database(tmp_path / "k.db")
    for kw in (dict(name="alice\n"), dict(name="alice\r"), dict(name="b", quota_seconds_per_day=float("inf")),
               dict(name="b", quota_seconds_per_day=float("nan")), dict(name="b", rate_per_minute=10**30)):
        with pytest.raises(KeyProblem):
            create_key(db, **kw)
    assert list_keys(db) == []
    create_key(db, "alice", quota_seconds_per_day=1e6, rate_per_minute=1_000_000)


def test_key_changes_are_audited_with_the_key_they_changed(stack):
    """The audit log says which key an admin made or revoked (through the API or the keys command), and a
    refused create names no video (its id never existed)."""
    import os

    import httpx

    from moviola.cli import main

    admin, user = stack.key("root", admin=True), stack.key("user", quota_seconds_per_day=0.5)
    victim, local = f"victim-{os.urandom(3).hex()}", f"cliuser-{os.urandom(3).hex()}"
    headers = {"Authorization": f"Bearer {admin}"}
    base = stack.base_url
    assert httpx.post(f"{base}/admin/keys", json={"name": victim}, headers=headers).status_code == 200
    assert httpx.post(f"{base}/admin/keys/{victim}/revoke", headers=headers).status_code == 200
    for bad in ({"quota_seconds_per_day": "Infinity"}, {"rate_per_minute": 10**30}, {"name": "x\n"}):
        r = httpx.post(f"{base}/admin/keys", json={"name": "q", **bad}, headers=headers)
        assert r.status_code == 400, r.text
    assert main(["keys", "create", "--name", local, "--storage", str(stack.storage)]) == 0
    assert main(["keys", "revoke", local, "--storage", str(stack.storage)]) == 0
    r = httpx.post(f"{base}/videos", data={"prompt": "a red circle", "seconds": "1", "size": "64x64"},
                   headers={"Authorization": f"Bearer {user}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "quota_too_small", r.text  # refused in queue()

    def rows():
        return httpx.get(f"{base}/admin/audit", params={"limit": 10000}, headers=headers).json()["data"]

    server_stack.wait_for(lambda: any(r["action"] == "videos.create" and r["status"] == 400 for r in rows()), 10,
                          what="the refused create's audit row")  # written just after the answer
    got = rows()
    assert {("admin.keys.create", victim), ("admin.keys.revoke", victim), ("cli.keys.create", local),
            ("cli.keys.revoke", local)} <= {(r["action"], r["target"]) for r in got if r["status"] == 200}
    assert all(r["key_name"].startswith("cli:") for r in got if r["action"].startswith("cli."))
    refused = [r for r in got if r["action"] == "videos.create" and r["status"] == 400]
    assert refused and all(r["video_id"] is None for r in refused), refused


def test_a_database_of_schema_1_is_brought_up_to_date(tmp_path):
    """A database made by an older Moviola (schema 1: no audit.target) opens, gains the column, keeps its rows."""
    import sqlite3

    from moviola.server.db import SCHEMA_VERSION, Database
    from moviola.server.keys import audit, audit_log

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript("""CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at DOUBLE PRECISION NOT NULL, key_name TEXT,
            action TEXT NOT NULL, video_id TEXT, status INTEGER NOT NULL, ms DOUBLE PRECISION);
        INSERT INTO audit (at, key_name, action, status) VALUES (1.0, 'k', 'videos.list', 200);""")
    con.commit()
    con.close()
    db = Database(path)
    audit(db, key_name="k", action="admin.keys.revoke", video_id=None, target="b", status=200, ms=1.0)
    assert [(r["action"], r["target"]) for r in audit_log(db)] == [("admin.keys.revoke", "b"), ("videos.list", None)]
    assert db.one("SELECT value FROM meta WHERE name = 'schema_version'")["value"] == str(SCHEMA_VERSION)


def test_old_audit_rows_are_pruned(tmp_path):
    import time

    from moviola.server.db import Database
    from moviola.server.keys import audit, audit_log, prune_audit

    db = Database(tmp_path / "a.db")
    audit(db, key_name="k", action="videos.create", video_id=None, status=200, ms=1.0)
    db.execute("UPDATE audit SET at = ?", (time.time() - 100 * 86400,))
    audit(db, key_name="k", action="videos.list", video_id=None, status=200, ms=1.0)
    assert prune_audit(db, 90 * 86400) == 1 and [r["action"] for r in audit_log(db)] == ["videos.list"]
