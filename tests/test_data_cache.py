"""`moviola data cache`: footage -> bucketed VAE latents + text embeddings, resumable, with provenance."""

import dataclasses
import hashlib
import sys
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from moviola.data.folder import file_sha256, load_clip
from moviola.data.folder_cache import (CacheError, FolderCacheConfig, build_folder_cache, open_cache,
                                       vae_fingerprint)
from moviola.data.latent_cache import (Bucket, LatentCache, WorldCacheConfig, build_world_cache, buckets_of,
                                       transition_clip)
from moviola.data.shots import ShotConfig
from moviola.models.vae import CausalVAE, VAEConfig

BUCKETS = [Bucket(32, 32, 5, 0.5), Bucket(64, 32, 5, 0.3), Bucket(32, 32, 9, 0.2, 4)]


class StubText:
    """A deterministic stand-in for the text encoder (the real one takes a minute to load here)."""

    dim = 8

    def encode(self, captions):
        toks = torch.stack([torch.tensor(np.frombuffer(hashlib.sha256(c.encode()).digest()[:24], np.uint8)
                                         .reshape(3, 8).astype(np.float32)) for c in captions])  # (B, 3, 8)
        return toks, torch.ones(len(captions), 3, dtype=torch.bool)


def _video(path: Path, frames: np.ndarray, rate: Fraction, codec: str = "libx264") -> Path:
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as c:
        opts = {"x264-params": "bframes=2:b-adapt=0", "preset": "veryfast"} if codec == "libx264" else {}
        s = c.add_stream(codec, rate=rate, options=opts)
        s.width, s.height = w, h
        s.pix_fmt = "yuv444p" if codec == "libx264" and (h % 2 or w % 2) else "yuv420p"
        for i in range(t):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


def _moving(t: int, h: int, w: int, colour, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = np.kron(rng.integers(0, 90, (h // 4 + 1, w // 4 + 1, 1)), np.ones((4, 4, 3)))[:h, :w] + np.array(colour)
    out = np.repeat(bg[None].clip(0, 255).astype(np.uint8), t, 0)
    for i in range(t):
        out[i, h // 3:h // 3 + 8, (3 * i) % max(1, w - 8):(3 * i) % max(1, w - 8) + 8] = 255
    return out


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    _video(root / "scope.mp4", _moving(45, 40, 94, (0, 40, 90), 1), Fraction(30000, 1001))  # 2.35:1, 1.5 s
    edit = np.concatenate([_moving(30, 48, 48, (0, 60, 140), 2), _moving(30, 48, 48, (150, 90, 0), 3)])
    _video(root / "edit.mkv", edit, Fraction(25))  # two 1.2 s shots, cut at 1.2 s
    _video(root / "tall.webm", _moving(14, 80, 48, (60, 0, 60), 4), Fraction(12), "libvpx-vp9")
    (root / "tall.txt").write_text("a white square slides across a purple wall\n")
    (root / "notvideo.mp4").write_text("not a video")
    _video(root / "cutoff.mkv", _moving(50, 32, 32, (90, 90, 90), 5), Fraction(25))
    data = (root / "cutoff.mkv").read_bytes()
    (root / "cutoff.mkv").write_bytes(data[: int(len(data) * 0.6)])  # header and first frames intact
    _video(root / "nocap.mp4", _moving(20, 32, 32, (0, 0, 0), 6), Fraction(25))
    rows = [{"path": "scope.mp4", "caption": "a white square slides over blue", "licence": "CC-BY-4.0",
             "consent": "yes", "source": "test camera"},
            {"path": "edit.mkv", "caption": "two shots", "licence": "CC0-1.0", "source": "test edit"},
            {"path": "notvideo.mp4", "caption": "x"}, {"path": "cutoff.mkv", "caption": "cut off"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    torch.manual_seed(0)
    model = CausalVAE(VAEConfig(latent_channels=4, base_channels=4, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                                decoder_res_blocks=1)).eval()
    model.set_latent_stats(torch.full((4,), 0.1), torch.full((4,), 2.0))  # normalisation must be applied
    d = tmp_path_factory.mktemp("vae")
    model.save_pretrained(d)
    return model, vae_fingerprint(d)


def _cfg(**kw) -> FolderCacheConfig:
    return FolderCacheConfig(buckets=list(BUCKETS), shots=ShotConfig(enabled=True), **kw)


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_cache_buckets_clips_skips_bad_files_and_records_provenance(footage, vae, tmp_path):
    model, fp = vae
    summary = build_folder_cache(footage, tmp_path / "c", model, StubText(), _cfg(), vae_fp=fp)
    skipped = {Path(p["path"]).name: p["problem"] for p in summary["skipped"]}
    assert set(skipped) == {"notvideo.mp4", "cutoff.mkv", "nocap.mp4"}
    assert "frames stop at" in skipped["cutoff.mkv"] and "no caption" in skipped["nocap.mp4"]

    cache = open_cache(tmp_path / "c", vae_fingerprint=fp)
    names = [b.name for b in cache.buckets]
    assert names == ["64x32x5", "32x32x9"] and cache.buckets[1].batch_size == 4  # 32x32x5 got no clip: left out
    by_path = {}
    for b, lat, rows in zip(cache.buckets, cache.latents, cache.rows):
        assert lat.dtype == torch.float16 and lat.shape[1:] == (4, 1 + (b.frames - 1) // 4, b.height // 8, b.width // 8)
        assert len(rows) == len(lat)
        for r in rows:
            by_path.setdefault(r["path"], []).append((b.name, r))
    # scope (1.5 s, 2.35:1) -> the 2:1 bucket; the edit -> one clip per 1.2 s shot, each inside its shot and
    # long enough for 9 frames at 8 fps (1.04 s); tall (0.6:1, 1.17 s) -> the square 9-frame bucket.
    assert [n for n, _ in by_path["scope.mp4"]] == ["64x32x5"]
    assert [n for n, _ in by_path["edit.mkv"]] == ["32x32x9", "32x32x9"]
    edit = sorted((r["start"], r["end"], r["shot"]) for _, r in by_path["edit.mkv"])
    assert [s for *_, s in edit] == [0, 1]
    assert edit[0][1] <= 1.2 + 1e-6 and edit[1][0] >= 1.2 - 1e-6
    assert [n for n, _ in by_path["tall.webm"]] == ["32x32x9"]

    prov = {(Path(p["path"]).name, p["start"]): p for p in cache.provenance()}
    assert len(prov) == 4
    for p in prov.values():
        assert p["sha256"] == file_sha256(p["path"])
    scope = next(p for p in prov.values() if p["path"].endswith("scope.mp4"))
    assert (scope["licence"], scope["consent"], scope["source"]) == ("CC-BY-4.0", "yes", "test camera")
    assert scope["caption"] == "a white square slides over blue"
    assert next(p for p in prov.values() if p["path"].endswith("tall.webm"))["caption"].startswith("a white square")

    # The stored latents are the VAE's normalised posterior means of the clip as load_clip cuts it.
    _, row = by_path["scope.mp4"][0]
    x = torch.from_numpy(load_clip(footage / "scope.mp4", row["start"], frames=5, width=64, height=32, fps=8.0,
                                   src_fps=30000 / 1001)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        want = model.normalize(model.encode(x).mean).half()
    got = cache.latents[0][[r["path"] for r in cache.rows[0]].index("scope.mp4")]
    assert torch.allclose(got.float(), want[0].float(), atol=1e-3)
    # Every caption and the empty one have a text row.
    assert cache.captions() | {""} <= set(cache.caption_row)
    assert cache.text_tokens.shape == (len(cache.caption_row), 3, 8)


def test_interrupted_build_finishes_identical_to_an_uninterrupted_one(footage, vae, tmp_path):
    model, fp = vae
    a, b = tmp_path / "a", tmp_path / "b"
    build_folder_cache(footage, a, model, StubText(), _cfg(part_size=1), vae_fp=fp)

    def die(stage, done, total):
        if stage == "encode" and done == 2:
            raise KeyboardInterrupt  # as a Ctrl-C between parts
    with pytest.raises(KeyboardInterrupt):
        build_folder_cache(footage, b, model, StubText(), _cfg(part_size=1), vae_fp=fp, on_progress=die)
    with pytest.raises(CacheError, match="not a complete"):
        open_cache(b)
    # What a kill -9 mid-write leaves: a temp file, and a part whose rows were written but not its latents.
    parts = sorted(b.glob("bucket_*/part_*.json"))
    (parts[0].parent / ".part_0007.tmp-deadbeef.safetensors").write_bytes(b"half")
    (b / "bucket_32x32x9" / "part_0001.json").write_text(json.dumps({"key": "x", "rows": [], "failed": []}))
    summary = build_folder_cache(footage, b, model, StubText(), _cfg(part_size=1), vae_fp=fp)
    assert summary["parts_reused"] == 2 and summary["parts_encoded"] == 2
    assert _files(a) == _files(b)

    # A removed file: its clip leaves the cache, unchanged parts are reused, stale parts are deleted.
    (footage / "tall.webm").rename(tmp_path / "tall.webm")
    try:
        summary = build_folder_cache(footage, b, model, StubText(), _cfg(part_size=1), vae_fp=fp)
    finally:
        (tmp_path / "tall.webm").rename(footage / "tall.webm")
    assert summary["parts_encoded"] == 0 and sum(summary["clips"].values()) == 3
    assert sorted(p.name for p in (b / "bucket_32x32x9").iterdir()) == [
        "part_0000.json", "part_0000.safetensors", "part_0001.json", "part_0001.safetensors"]  # the edit's shots
    assert all("tall" not in p["path"] for p in open_cache(b).provenance())


def test_another_vae_or_no_cache_is_a_clear_error(footage, vae, tmp_path):
    model, fp = vae
    build_folder_cache(footage, tmp_path / "c", model, StubText(), _cfg(), vae_fp=fp)
    with pytest.raises(CacheError, match="made with another VAE"):
        open_cache(tmp_path / "c", vae_fingerprint="0" * 64)
    with pytest.raises(FileNotFoundError, match="no such cache folder"):
        open_cache(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no such VAE weights"):
        vae_fingerprint(tmp_path)


def test_world_cache_provenance_names_the_generator_seed_and_spec(vae, tmp_path):
    model, _ = vae
    cfg = WorldCacheConfig(n_clips=2, buckets=[(32, 32, 1.0, 1.0)], holdout="")
    build_world_cache(tmp_path, cfg, model, StubText())
    cache = LatentCache(tmp_path, buckets_of(cfg))
    prov = cache.provenance()
    assert len(prov) == 2 and cache.buckets[0].batch_size == 0
    for i, p in enumerate(prov):
        assert p["source"] == "procedural: moviola.world" and p["path"] is None and p["seed"] == [0, 0, i]
        spec = cache.rows[0][i]["spec"]
        assert p["spec_sha256"] == hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        assert p["caption"] == cache.rows[0][i]["canonical"]


def test_a_transition_clip_dissolves_from_one_scene_into_the_other():
    a = np.zeros((17, 2, 2, 3), np.uint8)
    b = np.full((17, 2, 2, 3), 240, np.uint8)
    c = transition_clip(a, b, 5, 4)
    assert c.shape == a.shape and c.dtype == np.uint8
    assert np.array_equal(c[:5], a[:5]) and np.array_equal(c[-4:], b[-4:])  # the frames connect gives
    steps = np.diff(c[4:14, 0, 0, 0].astype(int))
    assert (steps > 0).all() and steps[0] < steps[4] and steps[-1] < steps[4]  # eased from a's last to b's first
    with pytest.raises(ValueError, match="two clips of one shape"):
        transition_clip(a, b[:, :1], 5, 4)
    with pytest.raises(ValueError, match="more than 9 frames"):
        transition_clip(a[:9], b[:9], 5, 4)


def test_world_cache_transitions_are_encoded_dissolves_of_two_scenes(vae, tmp_path):
    from moviola.world.render import render
    from moviola.world.truth import spec_from_dict

    model, _ = vae
    cfg = WorldCacheConfig(n_clips=2, buckets=[(32, 32, 1.0, 0.5), (32, 32, 2.0, 0.5)], holdout="", transitions=3)
    build_world_cache(tmp_path, cfg, model, StubText())
    cache = LatentCache(tmp_path, buckets_of(cfg))
    assert cache.transitions[0] is None  # 9 frames cannot hold connect's 5 + 4 known frames and a transition
    tr, rows = cache.transitions[1], cache.transition_rows[1]
    assert tr.shape == (3, *cache.latents[1].shape[1:]) and len(rows) == 3
    for lat, r in zip(tr, rows):
        a, b = (render(spec_from_dict(r[k]), num_frames=17).frames for k in ("from_spec", "spec"))
        assert r["transition"] == "dissolve" and r["spec"] != r["from_spec"]
        x = torch.from_numpy(transition_clip(a, b, 5, 4)).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1)
        with torch.no_grad():
            want = model.normalize(model.encode(x).mean)[0].half()
        assert torch.allclose(lat.float(), want.float(), atol=2e-3)
        assert {r["short"], r["detailed"], r["canonical"]} <= set(cache.caption_row)  # captions embedded
    assert {r["canonical"] for r in rows} <= cache.captions()
    prov = cache.provenance()
    assert len(prov) == 2 + 3 and sum(p["source"].endswith("(two scenes, dissolve)") for p in prov) == 3
    # a cache built without transitions is the same cache as before they existed: no transition files
    plain = tmp_path / "plain"
    build_world_cache(plain, WorldCacheConfig(n_clips=2, buckets=[(32, 32, 2.0, 1.0)], holdout=""), model, StubText())
    assert not list(plain.glob("bucket_*/transition_*")) and LatentCache(plain, buckets_of(
        WorldCacheConfig(buckets=[(32, 32, 2.0, 1.0)]))).transitions == [None]


def test_world_cache_rendered_by_worker_processes_is_the_same_cache(vae, tmp_path, monkeypatch):
    """render_workers only changes where clips are rendered: every shard, caption and text row is identical,
    and more parts than the pool's window (two per worker) all arrive, in order."""
    import moviola.data.latent_cache as lc

    monkeypatch.setattr(lc, "PART", 1)  # one clip a shard: 5 parts through 2 workers
    model, _ = vae
    kw = dict(n_clips=3, buckets=[(32, 32, 1.0, 0.5), (32, 32, 2.0, 0.5)], holdout="", transitions=1)
    build_world_cache(tmp_path / "serial", WorldCacheConfig(**kw), model, StubText())
    build_world_cache(tmp_path / "pool", WorldCacheConfig(**kw, render_workers=2), model, StubText())
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".safetensors"]) == 5 + 1  # 5 shards + text
    for f in files:
        assert (tmp_path / "pool" / f).read_bytes() == (tmp_path / "serial" / f).read_bytes(), f


def test_a_clip_that_fails_to_load_is_skipped_and_named(footage, vae, tmp_path, monkeypatch):
    """A file can decode in the scan and still fail where a clip is cut (a damaged stretch): that clip is
    left out and named; the build finishes."""
    import moviola.data.folder_cache as fc
    from moviola.video_io import VideoError

    real = fc.load_clip

    def flaky(path, start, **kw):
        if Path(path).name == "edit.mkv" and start > 1.0:
            raise VideoError(path, "truncated or corrupt video (decoding failed after 3 frames: test)")
        return real(path, start, **kw)
    monkeypatch.setattr(fc, "load_clip", flaky)
    model, fp = vae
    summary = build_folder_cache(footage, tmp_path / "c", model, StubText(), _cfg(), vae_fp=fp)
    named = [p["problem"] for p in summary["skipped"] if p["path"].endswith("edit.mkv")]
    assert len(named) == 1 and "decoding failed" in named[0] and "clip from 1.2" in named[0]
    cache = open_cache(tmp_path / "c")
    assert [r["shot"] for rows in cache.rows for r in rows if r["path"] == "edit.mkv"] == [0]
    assert sum(len(lat) for lat in cache.latents) == 3


def test_world_cache_made_from_anything_else_is_rebuilt(vae, tmp_path):
    """A run folder's cache records what made it (VAE weights, text encoder, data settings): reused as is when
    they match, rebuilt when any differs (a new --vae on an old run folder once trained on the old VAE's
    latents in silence)."""
    from moviola.data.latent_cache import cache_identity

    model, _ = vae
    cfg = WorldCacheConfig(n_clips=2, buckets=[(32, 32, 1.0, 1.0)], holdout="")
    ident = cache_identity(cfg, vae="a" * 64, text_encoder="minilm")
    assert build_world_cache(tmp_path, cfg, model, StubText(), identity=ident) is None  # nothing there to replace
    part = tmp_path / "bucket_32x32x9" / "part_0000.safetensors"
    stamp = part.stat().st_mtime_ns
    assert build_world_cache(tmp_path, cfg, model, StubText(), identity=ident) is None
    assert part.stat().st_mtime_ns == stamp  # the same identity: reused
    assert cache_identity(dataclasses.replace(cfg, render_workers=4), vae="a" * 64, text_encoder="minilm") == ident
    for other in (cache_identity(cfg, vae="b" * 64, text_encoder="minilm"),
                  cache_identity(cfg, vae="a" * 64, text_encoder="/models/t5"),
                  cache_identity(dataclasses.replace(cfg, seed=1), vae="a" * 64, text_encoder="minilm"),
                  cache_identity(cfg, vae="a" * 64, text_encoder="minilm", extra_colors=["pink"])):
        assert build_world_cache(tmp_path, cfg, model, StubText(), identity=other) == "different"
        assert part.stat().st_mtime_ns != stamp
        stamp = part.stat().st_mtime_ns
    assert json.loads((tmp_path / "identity.json").read_text()) == other
    assert len(LatentCache(tmp_path, buckets_of(cfg)).rows[0]) == 2


def test_model_card_names_missing_licences_and_every_base(tmp_path):
    """Found by a review: clips without a licence showed as an empty label, and a fine-tune of a fine-tune named
    only its own base's data."""
    from moviola.data.provenance import summarize, write_card

    rows = [{"source": "my camera", "licence": "", "consent": "yes"}, {"source": "my camera", "licence": "CC-BY"}]
    summary = summarize(rows)
    summary["base"] = {"clips": 11, "by_source": {"footage": 11}, "base": {"clips": 44000, "by_source": {"world": 44000}}}
    card = write_card(tmp_path, title="t", info={"data": {"cache_dir": "c"}}, summary=summary).read_text()
    assert "licence: not recorded (1), CC-BY (1)" in card and "1 clips have no licence recorded" in card
    assert "consent: yes (1), not recorded (1)" in card
    assert "the base model's own data" in card and "the base's base model's own data" in card and "44000 clips" in card


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_render_workers_die_with_their_parent(tmp_path):
    """A SIGKILLed trainer had left its render / data workers blocked forever (found by a review)."""
    import os
    import signal
    import subprocess
    import time

    code = f"""
import os, time, sys
from moviola.data.parallel import ordered_map
def work(i):
    open(os.path.join({str(tmp_path)!r}, f"w{{os.getpid()}}"), "w").close()
    time.sleep(120)
for _ in ordered_map(work, range(4), 2):
    pass
"""
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("w*"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
        workers = [int(p.name[1:]) for p in tmp_path.glob("w*")]
        assert len(workers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init to reap it counts as gone
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while any(alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)


def test_a_shared_cache_is_never_removed_through_its_link(vae, tmp_path):
    """scripts/train_gpu.py links one cache into several run folders: a run with other settings must not delete
    it under the others (found by reviewing the day's change)."""
    from moviola.data.latent_cache import cache_identity

    model, _ = vae
    cfg = WorldCacheConfig(n_clips=2, buckets=[(32, 32, 1.0, 1.0)], holdout="")
    shared = tmp_path / "shared"
    assert build_world_cache(shared, cfg, model, StubText(), identity=cache_identity(cfg, vae="a", text_encoder="m")) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "cache").symlink_to(shared, target_is_directory=True)
    with pytest.raises(ValueError, match="links to a shared cache made from other settings"):
        build_world_cache(tmp_path / "run" / "cache", cfg, model, StubText(),
                          identity=cache_identity(cfg, vae="b", text_encoder="m"))
    assert (shared / "bucket_32x32x9" / "part_0000.safetensors").exists()
    (shared / "identity.json").unlink()  # a cache from before identities: rebuilt, and said why
    assert build_world_cache(shared, cfg, model, StubText(), identity=cache_identity(cfg, vae="a", text_encoder="m")) \
        == "unrecorded"


def test_caption_rows_of_another_text_encoder_are_rebuilt(tmp_path):
    """The same captions from another encoder (same width or not) are other rows: a cache rebuilt with
    --text-encoder had kept the first encoder's."""
    import torch

    from moviola.data.latent_cache import build_text, load_text

    class Fake:
        def __init__(self, path, value):
            self.path, self.value = path, value

        def encode(self, caps):
            return torch.full((len(caps), 2, 3), self.value), torch.ones(len(caps), 2, dtype=torch.bool)

    build_text(tmp_path, ["a red circle"], Fake("/enc/a", 1.0))
    build_text(tmp_path, ["a red circle"], Fake("/enc/a", 5.0))  # same encoder, same captions: kept
    assert float(load_text(tmp_path)[0].max()) == 1.0
    build_text(tmp_path, ["a red circle"], Fake("/enc/b", 2.0))
    assert float(load_text(tmp_path)[0].max()) == 2.0
    # A run killed between writing new embeddings and the new text.json, then rerun on the old captions: the
    # embeddings' own key says they are not text.json's, so they are rebuilt (they had been kept, rows of
    # other captions under these ones)
    index = (tmp_path / "text.json").read_bytes()
    build_text(tmp_path, ["a red circle", "a blue square"], Fake("/enc/b", 7.0))
    (tmp_path / "text.json").write_bytes(index)
    build_text(tmp_path, ["a red circle"], Fake("/enc/b", 3.0))
    tokens, _, rows = load_text(tmp_path)
    assert len(tokens) == len(rows) == 2 and float(tokens.max()) == 3.0


def test_training_checks_a_footage_caches_text_encoder_and_frame_rate(tmp_path):
    from types import SimpleNamespace

    from moviola.pipeline import PipelineConfig
    from moviola.train.dit import _check_footage_cache

    def cache(**meta):
        return SimpleNamespace(meta={"root": "/footage", **meta})

    pcfg = PipelineConfig()
    with pytest.raises(ValueError, match="encoded by '/enc/bert'"):
        _check_footage_cache(cache(text_encoder="/enc/bert", config={"fps": 8.0}), pcfg, None)
    assert _check_footage_cache(cache(text_encoder="minilm", config={"fps": 12.0}), pcfg, None).fps == 12.0
    with pytest.raises(ValueError, match="clips at 12 fps; the model being fine-tuned makes 8 fps"):
        _check_footage_cache(cache(text_encoder="minilm", config={"fps": 12.0}), pcfg, tmp_path)
    assert _check_footage_cache(cache(text_encoder="minilm", config={"fps": 8.0}), pcfg, tmp_path) == pcfg


def test_the_world_cache_encodes_without_autograd(vae, tmp_path, monkeypatch):
    """The VAE's weights require grad: encoding the cache's clips with autograd on kept every part's activations
    (18.8 GB for 200 clips; the 4,000-clip training recipes were killed for memory on a 24 GB machine)."""
    from moviola.data.latent_cache import WorldCacheConfig, build_world_cache

    model, _ = vae
    seen, real = [], type(model).encode

    def encode(self, x):
        seen.append(torch.is_grad_enabled())
        return real(self, x)

    monkeypatch.setattr(type(model), "encode", encode)
    assert any(p.requires_grad for p in model.parameters())  # what made it matter
    build_world_cache(tmp_path, WorldCacheConfig(n_clips=2, buckets=[(32, 32, 1.0, 1.0)], holdout=""), model,
                      StubText())
    assert seen and not any(seen)


def test_a_scan_record_is_kept_only_for_the_same_file(tmp_path):
    """Two files of one size and mtime whose names are swapped (`mv` keeps mtimes): each path's scan record, with
    its sha256, is made again, where size and mtime alone had kept them (each caption then sat on the other's
    latents, under the other's hash)."""
    import os

    from moviola.data.folder import file_sha256
    from moviola.data.folder_cache import _scan_record
    from moviola.video_io import write_video

    a, b = tmp_path / "a.mkv", tmp_path / "b.mkv"
    write_video(a, np.full((9, 32, 32, 3), 200, np.uint8), 8)
    write_video(b, np.full((9, 32, 32, 3), 30, np.uint8), 8)
    assert a.stat().st_size == b.stat().st_size  # flat frames: the same bytes but for the colour
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    old_a = _scan_record(a, None)
    assert _scan_record(a, old_a) is old_a  # the same file: reused
    os.replace(a, tmp_path / "t.mkv")
    os.replace(b, a)
    os.replace(tmp_path / "t.mkv", b)
    assert _scan_record(a, old_a)["sha256"] == file_sha256(a) != old_a["sha256"]
