"""Known-frame conditioning (issue 6) on tiny configs, CPU only: the widened DiT, frame_cond and the samplers
that keep known frames, the trainer's random masks, every pipeline ability, and every validation error.

The pipelines here are a tiny random VAE and a tiny random DiT with a hash text encoder (no MiniLM load):
the outputs are noise, so the tests check what holds for any weights: lengths, shapes, given frames kept
exactly, and errors raised before any window is sampled.
"""

import dataclasses
import json
import zlib

import numpy as np
import pytest
import torch

from moviola.flow.path import timesteps
from moviola.flow.samplers import SOLVERS, known_frames_fn, make_noise, sample
from moviola.models.dit import DiT, DiTConfig, PRESETS, frame_cond, with_conditioning
from moviola.models.vae import PRESETS as VAE_PRESETS
from moviola.models.vae import CausalVAE
from moviola.pipeline import (CONTEXT_FRAMES, SEAM_BLEND, SUFFIX_FRAMES, TRANSITION_GUIDANCE, Card, GenerationError,
                              Pipeline, PipelineConfig, dissolve)
from moviola.train.dit import MASK_KINDS, random_frame_mask

TEXT_DIM = 8
SIZE = dict(width=32, height=32)


class HashText:
    """A stand-in text encoder: 3 tokens per prompt drawn from a seed that is the prompt's CRC (the real
    MiniLM takes a minute to load on a busy 2-core machine, and these tests don't need meaning)."""

    def __init__(self, dim: int = TEXT_DIM):
        self.dim = dim

    def encode(self, prompts):
        toks = [torch.randn(3, self.dim, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                for p in prompts]
        return torch.stack(toks), torch.ones(len(prompts), 3, dtype=torch.bool)  # (B, 3, dim), (B, 3)


def random_dit(cond_channels: int = 0, seed: int = 0) -> DiT:
    """A tiny DiT with every weight random: a fresh one outputs exactly zero (adaLN-zero), which would
    hide everything these tests look at."""
    torch.manual_seed(seed)
    model = DiT(dataclasses.replace(PRESETS["tiny"], in_channels=4, text_dim=TEXT_DIM, cond_channels=cond_channels))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def _pipe(cond: bool, max_seconds: float = 2.0) -> Pipeline:
    torch.manual_seed(0)
    vae = CausalVAE(VAE_PRESETS["tiny"])
    dit = random_dit(5 if cond else 0)
    # 2 s windows at 8 fps: 17 frames, so a 5 s clip takes several windows and a 1 s transition fits.
    cfg = PipelineConfig(max_seconds=max_seconds, max_total_seconds=6.0, steps=2)
    return Pipeline(vae, dit, HashText(), cfg)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return _pipe(cond=True)


@pytest.fixture(scope="module")
def text_only() -> Pipeline:
    return _pipe(cond=False)


def _clip(frames: int, height: int = 32, width: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def _image(height: int = 40, width: int = 48, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- the model --------------------------------------------------------------------------------------

def _inputs(B=2, T=3, H=4, W=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, T, H, W, generator=g)
    t = torch.rand(B, generator=g)
    ctx = torch.randn(B, 3, TEXT_DIM, generator=g)
    return x, t, ctx, g


def test_with_conditioning_computes_the_original_until_trained(tmp_path):
    base = random_dit()
    x, t, ctx, g = _inputs()
    with torch.no_grad():
        ref = base(x, t, ctx)  # (2, 4, 3, 4, 4)
    assert ref.abs().mean() > 1e-3  # a model that outputs something
    wide = with_conditioning(base)
    assert wide is not base and base.config.cond_channels == 0 and wide.config.cond_channels == 4 + 1
    assert wide.patch_embed.in_features == 4 * (4 + 5)  # 2x2 patches of [x, known latents, mask]
    assert not wide.training  # keeps the original's mode
    latents = torch.randn(2, 4, 3, 4, 4, generator=g)
    conds = {"none": None, "zeros": torch.zeros(2, 5, 3, 4, 4),
             "nothing known": frame_cond(latents, torch.zeros(3)),
             "first known": frame_cond(latents, torch.tensor([1.0, 0, 0])),
             "per-sample masks": frame_cond(latents, torch.tensor([[1.0, 1, 0], [0, 0, 1]])),
             "noise": torch.randn(2, 5, 3, 4, 4, generator=g)}
    with torch.no_grad():
        for name, cond in conds.items():  # zero columns: any cond at all gives the original's output
            torch.testing.assert_close(wide(x, t, ctx, cond=cond), ref, rtol=0, atol=1e-6, msg=name)

    # One gradient step on the new columns only: now cond matters, and cond=None still is the original.
    wide.train()
    P, D = 4, wide.config.dim
    old = wide.patch_embed.weight.detach().view(D, P, 9)[:, :, :4].clone()
    cond = conds["per-sample masks"]
    wide(x, t, ctx, cond=cond).square().mean().backward()
    grad = wide.patch_embed.weight.grad.view(D, P, 9)
    assert grad[:, :, 4:].abs().sum() > 0  # the new inputs get a gradient
    grad[:, :, :4] = 0
    with torch.no_grad():
        wide.patch_embed.weight -= 1.0 * wide.patch_embed.weight.grad
    wide.eval()
    assert torch.equal(wide.patch_embed.weight.detach().view(D, P, 9)[:, :, :4], old)
    with torch.no_grad():
        assert (wide(x, t, ctx, cond=cond) - ref).abs().max() > 1e-4
        torch.testing.assert_close(wide(x, t, ctx), ref, rtol=0, atol=1e-6)

    # The config names the conditioning and round-trips through a model folder.
    wide.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["cond_channels"] == 5
    loaded = DiT.from_pretrained(tmp_path)
    assert loaded.config == wide.config
    with torch.no_grad():
        assert torch.equal(loaded(x, t, ctx, cond=cond), wide(x, t, ctx, cond=cond))
    assert with_conditioning(loaded) is loaded  # already conditioned: returned as is


def test_with_conditioning_refuses_other_cond_widths_and_forward_checks_cond():
    odd = DiT(DiTConfig(dim=32, depth=1, heads=2, freq_dim=64, in_channels=4, text_dim=TEXT_DIM, cond_channels=3))
    with pytest.raises(ValueError, match="cond_channels=3; frame conditioning needs 5"):
        with_conditioning(odd)
    x, t, ctx, _ = _inputs()
    with pytest.raises(ValueError, match="cond given but the model has cond_channels=0"):
        random_dit()(x, t, ctx, cond=torch.zeros(2, 5, 3, 4, 4))
    with pytest.raises(ValueError, match="cond must have shape"):
        random_dit(5)(x, t, ctx, cond=torch.zeros(2, 5, 2, 4, 4))


def test_frame_cond_keeps_only_known_frames_and_broadcasts_the_mask():
    latents = torch.randn(2, 4, 5, 3, 6)
    mask = torch.tensor([1.0, 0, 0, 1, 0])
    c = frame_cond(latents, mask)
    assert c.shape == (2, 5, 5, 3, 6) and c.dtype == latents.dtype
    assert torch.equal(c[:, :4, [0, 3]], latents[:, :, [0, 3]])
    assert torch.equal(c[:, :4, [1, 2, 4]], torch.zeros(2, 4, 3, 3, 6))
    assert torch.equal(c[:, 4], mask.view(1, 5, 1, 1).expand(2, 5, 3, 6))
    per = frame_cond(latents, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1]]))  # (B, T) masks, any dtype
    assert torch.equal(per[0, 4, :, 0, 0], torch.tensor([1.0, 1, 0, 0, 0]))
    assert torch.equal(per[1, 4, :, 0, 0], torch.tensor([0.0, 0, 0, 0, 1]))
    assert torch.equal(per[1, :4, 4], latents[1, :, 4]) and not per[1, :4, :4].any()


@pytest.mark.parametrize("sampler", list(SOLVERS))
def test_known_frames_land_exactly_with_every_sampler(sampler):
    dit = random_dit(5)
    B, T = 2, 5
    known = torch.randn(B, 4, T, 4, 4, generator=torch.Generator().manual_seed(5)) * 2
    mask = torch.tensor([[1.0, 0, 0, 0, 0], [1.0, 1, 0, 0, 1]])  # image-to-video; prefix + last frame
    noise = make_noise((B, 4, T, 4, 4), seed=6)
    ctx = torch.randn(B, 3, TEXT_DIM, generator=torch.Generator().manual_seed(7))
    m = mask.bool()[:, None, :, None, None].expand_as(known)  # (B, C, T, H, W)
    seen = []

    def model_fn(x, t):
        seen.append(torch.equal(x[m], known[m]))  # the network always sees the known frames clean
        return dit(x, t, ctx, cond=frame_cond(known, mask))

    z = sample(known_frames_fn(model_fn, known, mask, noise), noise, steps=5, sampler=sampler, shift=3.0)
    assert seen and all(seen)
    torch.testing.assert_close(z[m], known[m], rtol=0, atol=1e-5)
    assert torch.isfinite(z).all()
    assert (z[~m] - known[~m]).abs().mean() > 0.1  # the others were generated, not copied
    assert (z[~m] - noise[~m]).abs().mean() > 1e-3  # and the model moved them


def test_known_frames_follow_the_straight_path_at_every_grid_time():
    """Between 1 and 0 the known frames sit at (1 - t) known + t noise, where the trainer puts them."""
    known, noise = torch.randn(1, 2, 3, 2, 2), torch.randn(1, 2, 3, 2, 2)
    mask = torch.tensor([0.0, 1, 0])
    ts = timesteps(4, shift=2.0)
    xs = []
    fn = known_frames_fn(lambda x, t: torch.full_like(x, 7.0), known, mask, noise)

    def record(x, t):
        xs.append((float(t[0]), x.clone()))
        return fn(x, t)

    SOLVERS["euler"](record, noise, ts)
    for t, x in xs:
        torch.testing.assert_close(x[:, :, 1], ((1 - t) * known + t * noise)[:, :, 1], rtol=0, atol=1e-6)


# --- training masks ---------------------------------------------------------------------------------

def _kind(m: np.ndarray) -> str:
    """Which shape a mask has; a 'prefix' of one frame is the same mask as 'first'."""
    ones = np.flatnonzero(m)
    n, k = len(m), len(ones)
    if k == 0:
        return "none"
    if m[0] and np.array_equal(ones, np.arange(k)):
        return "first" if k == 1 else "prefix"
    if np.array_equal(ones, np.arange(n - k, n)):
        return "suffix"
    if m[-1] and np.array_equal(ones[:-1], np.arange(k - 1)):
        return "ends"
    return "other"


def test_random_frame_mask_shapes_kinds_and_never_all_known():
    rng = np.random.default_rng(0)
    assert abs(sum(MASK_KINDS.values()) - 1) < 1e-9
    for frames in range(1, 9):
        for _ in range(300):
            m = random_frame_mask(frames, 1.0, rng)
            assert m.shape == (frames,) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
            assert m.sum() < frames  # something is always left to generate
            assert _kind(m) != "other", m
            if frames == 1:
                assert not m.any()
            if _kind(m) == "suffix":
                assert m.sum() <= 2
            if _kind(m) == "ends":
                assert m[:-1].sum() <= 2
    for frames in (1, 2, 5):
        assert not any(random_frame_mask(frames, 0.0, rng).any() for _ in range(200))

    n, frames = 4000, 6
    kinds = [_kind(random_frame_mask(frames, 1.0, rng)) for _ in range(n)]
    share = {k: kinds.count(k) / n for k in ("none", "first", "prefix", "suffix", "ends")}
    assert share["none"] == 0
    # "first" also gets the one-frame prefixes: a quarter of the prefixes, 1 to 5 frames long.
    want = {"first": MASK_KINDS["first"] + MASK_KINDS["prefix"] / 5, "prefix": MASK_KINDS["prefix"] * 4 / 5,
            "suffix": MASK_KINDS["suffix"], "ends": MASK_KINDS["ends"]}
    for k, p in want.items():
        assert abs(share[k] - p) < 0.04, (k, share[k], p)
    some = [random_frame_mask(frames, 0.3, rng).any() for _ in range(n)]
    assert abs(np.mean(some) - 0.3) < 0.04


def test_training_with_cond_prob_widens_the_model_and_leaves_text_only_batches_alone(tmp_path, monkeypatch):
    import moviola.train.dit as train_dit_module
    from moviola.config import load_config
    from moviola.data.latent_cache import LatentCache, buckets_of

    monkeypatch.setattr(train_dit_module, "load_text_encoder", lambda name: HashText())
    torch.manual_seed(0)
    CausalVAE(VAE_PRESETS["tiny"]).save_pretrained(tmp_path / "vae")
    common = ["model.dim=32", "model.depth=2", "model.heads=2", "model.in_channels=4", "model.freq_dim=64",
              f"model.text_dim={TEXT_DIM}", "data.n_clips=4", "data.buckets=[[32,32,1.0,0.5],[32,32,2.0,0.5]]",
              "optim.batch_size=4", "optim.warmup_steps=1", "eval_every=0", "log_every=1", "ckpt_every=10",
              f"vae='{tmp_path / 'vae'}'", "optim.steps=2"]
    # with the motion term too: its frame pairs skip known frames
    cfg = load_config(train_dit_module.TrainDiTConfig, None,
                      common + ["cond_prob=0.5", "motion_loss=0.5", f"out='{tmp_path / 'c'}'"])
    model_dir = train_dit_module.train_dit(cfg)
    dit = DiT.from_pretrained(model_dir)
    assert dit.config.cond_channels == dit.config.in_channels + 1 == 5
    losses = [json.loads(line)["loss"] for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 2 and all(np.isfinite(losses))

    # The masks come from their own random stream: with cond_prob 0 the batches are the ones before.
    plain = dataclasses.replace(cfg, cond_prob=0.0)
    cache = LatentCache(tmp_path / "c" / "cache", buckets_of(cfg.data))
    with_masks = train_dit_module.Batches(cache, cfg, dit.config.patch)
    without = train_dit_module.Batches(cache, plain, dit.config.patch)
    known = 0
    for step in range(8):
        a, b = with_masks.batch(step), without.batch(step)
        assert "frame_mask" not in b and set(a) == set(b) | {"frame_mask"}
        for k in b:
            assert (torch.equal(a[k], b[k]) if torch.is_tensor(b[k]) else a[k] == b[k]), (step, k)
        fm = a["frame_mask"]
        assert fm.shape == (a["x0"].shape[0], a["x0"].shape[2])
        assert (fm.sum(1) < fm.shape[1]).all()
        known += int(fm.any(1).sum())
    assert known > 0


def test_scene_changes_replace_clips_with_connects_known_frames(tmp_path):
    import moviola.train.dit as T
    from moviola.data.latent_cache import LatentCache, build_world_cache, buckets_of

    torch.manual_seed(0)
    data = T.DataConfig(n_clips=4, buckets=[(32, 32, 2.0, 1.0)], holdout="", transitions=3)
    build_world_cache(tmp_path, data, CausalVAE(VAE_PRESETS["tiny"]), HashText())
    cache = LatentCache(tmp_path, buckets_of(data))
    optim = dataclasses.replace(T.TrainDiTConfig().optim, batch_size=4)
    base = T.TrainDiTConfig(data=data, cond_prob=0.5, optim=optim)
    every = T.Batches(cache, dataclasses.replace(base, transition_prob=1.0), (1, 2, 2))
    none = T.Batches(cache, base, (1, 2, 2))
    captions = {cache.caption_row[r[k]] for r in cache.transition_rows[0] for k in ("short", "detailed")}
    for step in range(4):
        a, b = every.batch(step), none.batch(step)
        assert torch.equal(a["noise"], b["noise"]) and torch.equal(a["t"], b["t"])  # only clips and masks change
        for i in range(4):
            assert any(torch.equal(a["x0"][i], tr.float()) for tr in cache.transitions[0])
            # a's first 5 frames (2 latent frames) and b's last 4 (1) known: what connect gives the model
            assert a["frame_mask"][i].tolist() == [1, 1, 0, 0, 1]
            assert any(torch.equal(a["context"][i], cache.text_tokens[r].float()) for r in captions | {none.empty})
        assert not any(torch.equal(x, tr.float()) for x in b["x0"] for tr in cache.transitions[0])


@pytest.mark.parametrize("overrides, message", [
    (dict(transition_prob=0.1), "transition_prob needs cond_prob > 0"),
    (dict(transition_prob=0.1, cond_prob=0.5), "transition_prob needs data.transitions > 0"),
    (dict(motion_loss=-1.0), "motion_loss must be >= 0"),
])
def test_scene_changes_need_known_frames_and_cached_transitions(tmp_path, overrides, message):
    import moviola.train.dit as T

    with pytest.raises(ValueError, match=message):
        T.train_dit(T.TrainDiTConfig(out=str(tmp_path / "run"), **overrides))
    assert not (tmp_path / "run").exists()  # refused before any work


# --- pipeline abilities -----------------------------------------------------------------------------

def test_text_to_video_one_window_several_windows_and_one_frame(pipe):
    assert pipe.window_frames == 17
    short = pipe("a red circle falls", seconds=1, seed=3, **SIZE)
    assert short.shape == (8, 32, 32, 3) and short.dtype == np.uint8
    chunks = list(pipe.stream("a red circle falls", seconds=5, seed=3, **SIZE))  # 40 frames > one window
    assert len(chunks) >= 3 and sum(len(c) for c in chunks) == 40
    assert all(c.shape[1:] == (32, 32, 3) and c.dtype == np.uint8 for c in chunks)
    whole = pipe("a red circle falls", seconds=5, seed=3, **SIZE)
    assert np.array_equal(whole, np.concatenate(chunks))  # __call__ is the stream, joined
    assert pipe("a red circle falls", num_frames=1, **SIZE).shape == (1, 32, 32, 3)
    assert sum(len(c) for c in pipe.stream("a red circle falls", num_frames=1, **SIZE)) == 1
    calls = []
    pipe("a red circle falls", seconds=3, callback=lambda i, n: calls.append((i, n)), **SIZE)
    assert calls and calls[-1][0] == calls[-1][1] and [i for i, _ in calls] == sorted(i for i, _ in calls)


def test_image_to_video_keeps_the_first_and_last_images(pipe):
    img, last = _image(), _image(seed=3)
    first = pipe.fit_image(img, 32, 32)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    out = pipe.image_to_video("a red circle falls", img, seconds=2, **SIZE)
    assert out.shape == (16, 32, 32, 3) and np.array_equal(out[0], first)
    assert np.array_equal(pipe("a red circle falls", image=img, seconds=2, **SIZE), out)
    long = pipe.image_to_video("a red circle falls", img, seconds=3, **SIZE)  # 24 frames: two windows
    assert long.shape == (24, 32, 32, 3) and np.array_equal(long[0], first)
    assert np.array_equal(pipe.image_to_video("a red circle falls", img, num_frames=1, **SIZE), first[None])

    both = pipe.image_to_video("a red circle falls", img, last_image=last, seconds=1, **SIZE)
    assert both.shape == (9, 32, 32, 3)  # one window of 4k + 1 frames, at least 9
    assert np.array_equal(both[0], first) and np.array_equal(both[-1], pipe.fit_image(last, 32, 32))
    only_last = pipe("a red circle falls", last_image=last, seconds=2, **SIZE)
    assert only_last.shape == (17, 32, 32, 3) and np.array_equal(only_last[-1], pipe.fit_image(last, 32, 32))
    W = pipe.window_frames  # a whole window ending on the image (it had been refused: "num_frames must be 1 to W - 1")
    assert len(pipe("a red circle falls", last_image=last, num_frames=W, steps=2, **SIZE)) == W


def test_extend_stream_yields_the_extension_window_by_window(pipe):
    """What `moviola extend` writes as it is made: the source, then each window's frames, the same clip as
    extend(); a bad request fails when called, before any chunk."""
    clip = _clip(6)
    chunks = list(pipe.extend_stream(clip, "the circle keeps moving", seconds=3, **SIZE))
    assert len(chunks) >= 3 and np.array_equal(chunks[0], clip)  # the source, then several windows
    assert np.array_equal(np.concatenate(chunks), pipe.extend(clip, "the circle keeps moving", seconds=3, **SIZE))
    with pytest.raises(GenerationError):
        pipe.extend_stream(clip, "x", seconds=600, **SIZE)
    for stream in (pipe.extend_stream(clip, "x", seconds=3, **SIZE), pipe.stream("x", seconds=3, **SIZE)):
        for _ in stream:  # the caller's code between chunks runs with gradients as it had them
            assert torch.is_grad_enabled()


@pytest.mark.parametrize("source_frames", [6, 2])
def test_extend_forward_and_backward_keep_the_source_in_place(pipe, source_frames):
    assert SUFFIX_FRAMES < 6 and CONTEXT_FRAMES < 6 and 2 < SUFFIX_FRAMES  # 2: shorter than the known frames
    clip = _clip(source_frames)
    fwd = pipe.extend(clip, "the circle keeps moving", seconds=1, **SIZE)
    assert fwd.shape == (source_frames + 8, 32, 32, 3) and np.array_equal(fwd[:source_frames], clip)
    back = pipe.extend(clip, "the circle keeps moving", seconds=1, backward=True, **SIZE)
    # After a known suffix the first SEAM_BLEND given frames are cross-faded in from the model's decoding
    # (a clip shorter than the suffix is padded and kept as is).
    kept = SEAM_BLEND if source_frames >= SUFFIX_FRAMES else 0
    assert back.shape == (source_frames + 8, 32, 32, 3) and np.array_equal(back[8 + kept:], clip[kept:])
    assert not np.array_equal(fwd[source_frames:], back[:8])
    if source_frames == 6:  # 3 s = 24 new frames: several windows either way
        fwd = pipe.extend(clip, "the circle keeps moving", seconds=3, **SIZE)
        back = pipe.extend(clip, "the circle keeps moving", seconds=3, backward=True, **SIZE)
        assert len(fwd) == len(back) == 30
        assert np.array_equal(fwd[:6], clip) and np.array_equal(back[24 + SEAM_BLEND:], clip[SEAM_BLEND:])


def test_a_suffix_seam_spreads_the_decoders_residual_evenly():
    from moviola.pipeline import SEAM_BEFORE, _blend_seam

    H = W = 4
    g = np.full((SEAM_BEFORE, H, W, 3), 100, np.uint8)  # generated frames, decoded leading into d
    d = np.full((SEAM_BLEND, H, W, 3), 100, np.uint8)   # the model's decoding of the given frames
    s = np.full((SEAM_BLEND, H, W, 3), 170, np.uint8)   # the given frames: a residual of 70 grey levels
    before, given = _blend_seam(g, d, s)
    # the frame before the ramp, the ramp, and a further given frame after it
    seq = np.concatenate([np.full((1, H, W, 3), 100, np.uint8), before, given, s[-1:]]).astype(float)
    steps = np.abs(np.diff(seq[:, 0, 0, 0]))  # every step across the seam region
    n = SEAM_BEFORE + SEAM_BLEND + 1
    assert len(steps) == n and np.all(np.abs(steps - 70 / n) <= 1)  # 70 / n each instead of one jump of 70
    # No generated frame before the seam (a window too short for it): the given frames alone take it in.
    none, given0 = _blend_seam(g[:0], d, s)
    assert none.shape[0] == 0
    assert np.allclose(given0[:, 0, 0, 0], [100 + 70 * j / (SEAM_BLEND + 1) for j in range(1, SEAM_BLEND + 1)], atol=1)


def test_a_prefix_seam_fades_the_decoders_residual_out_over_the_new_frames():
    from moviola.pipeline import PREFIX_SPREAD, _spread_prefix

    H = W = 4
    new = np.full((PREFIX_SPREAD + 2, H, W, 3), 100, np.uint8)  # generated after the model's decoding
    given = np.full((H, W, 3), 180, np.uint8)    # the prefix's last frame as given
    decoded = np.full((H, W, 3), 100, np.uint8)  # the model's decoding of it: a residual of 80 grey levels
    out = _spread_prefix(new, given, decoded)
    want = [100 + 80 * (1 - j / (PREFIX_SPREAD + 1)) for j in range(1, PREFIX_SPREAD + 1)] + [100, 100]
    assert np.allclose(out[:, 0, 0, 0], want, atol=0.5)
    steps = np.abs(np.diff(np.concatenate([[180], out[:, 0, 0, 0].astype(float)])))
    assert steps.max() <= 80 / (PREFIX_SPREAD + 1) + 1  # even steps instead of one jump of 80
    assert np.array_equal(new, np.full_like(new, 100))  # the input is left alone
    # a residual that would leave the range is clipped, and fewer new frames than the spread take what fits
    assert _spread_prefix(np.full((1, H, W, 3), 250, np.uint8), given, decoded).max() == 255
    assert _spread_prefix(new[:0], given, decoded).shape == (0, H, W, 3)


@pytest.mark.parametrize("call", ["extend", "image_to_video"])
def test_frames_after_a_known_prefix_carry_its_residual(pipe, monkeypatch, call):
    import moviola.pipeline as P

    clip, last = _clip(6), _image(32, 32, seed=5)

    def run():
        if call == "extend":
            return pipe.extend(clip, "the circle keeps moving", seconds=1, seed=2, **SIZE)[len(clip):]
        return pipe.image_to_video("a red circle falls", clip[0], last_image=last, seconds=1, seed=2, **SIZE)[1:-1]

    monkeypatch.setattr(P, "PREFIX_SPREAD", 0)
    plain = run().astype(int)
    monkeypatch.setattr(P, "PREFIX_SPREAD", 3)
    spread = run().astype(int)
    # the same sample; only the first three new frames move, by a shrinking share of one residual
    assert np.array_equal(spread[3:], plain[3:])
    d = spread[:3] - plain[:3]
    assert np.abs(d[0]).mean() > 1  # a random VAE leaves a large residual
    assert np.abs(d[0]).mean() > np.abs(d[1]).mean() > np.abs(d[2]).mean() > 0
    ok = (spread[:3] > 0) & (spread[:3] < 255)  # away from the clipped ends, d[j] = (3 - j) / 4 * e
    assert np.abs(d[1][ok[1] & ok[0]] - d[0][ok[1] & ok[0]] * 2 / 3).max() <= 1.5


def test_frames_before_a_known_suffix_are_guided_less(monkeypatch):
    import moviola.pipeline as P

    monkeypatch.setattr(P, "SUFFIX_GUIDANCE", (0.0, 0.5))
    assert P._seam_guidance(5.0, 6, 0, "cpu") == 5.0  # no suffix: the plain number
    assert P._seam_guidance(1.0, 6, 1, "cpu") == 1.0
    g = P._seam_guidance(5.0, 6, 1, "cpu")
    assert g.shape == (1, 1, 6, 1, 1)
    assert g.flatten().tolist() == [5.0, 5.0, 5.0, 3.0, 1.0, 5.0]  # the suffix frame itself is never sampled
    # a window too short for the whole ramp takes what fits
    assert P._seam_guidance(5.0, 2, 1, "cpu").flatten().tolist() == [1.0, 5.0]
    monkeypatch.setattr(P, "SUFFIX_GUIDANCE", ())
    assert P._seam_guidance(5.0, 6, 1, "cpu") == 5.0
    # frames after a known prefix, the same way; where the two ramps meet the lower guidance wins
    monkeypatch.setattr(P, "SUFFIX_GUIDANCE", (0.0, 0.5))
    monkeypatch.setattr(P, "PREFIX_GUIDANCE", (0.0, 0.5))
    assert P._seam_guidance(5.0, 6, 0, "cpu", prefix=0) == 5.0
    assert P._seam_guidance(5.0, 6, 0, "cpu", prefix=2).flatten().tolist() == [5.0, 5.0, 1.0, 3.0, 5.0, 5.0]
    assert P._seam_guidance(5.0, 5, 1, "cpu", prefix=1).flatten().tolist() == [5.0, 1.0, 3.0, 1.0, 5.0]
    monkeypatch.setattr(P, "PREFIX_GUIDANCE", (0.0, 0.0))
    assert P._seam_guidance(5.0, 5, 1, "cpu", prefix=1).flatten().tolist() == [5.0, 1.0, 1.0, 1.0, 5.0]


def test_windows_with_known_frames_sample_with_the_per_frame_guidance(pipe, monkeypatch):
    import moviola.pipeline as P

    seen = []
    real = P.cfg_model_fn

    def spy(model, cond, uncond, guidance, **kw):
        seen.append(guidance)
        return real(model, cond, uncond, guidance, **kw)

    monkeypatch.setattr(P, "cfg_model_fn", spy)
    monkeypatch.setattr(P, "SUFFIX_GUIDANCE", (0.0,))
    monkeypatch.setattr(P, "PREFIX_GUIDANCE", (0.0,))
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    pipe.window("a red circle", width=64, height=64, frames=9, steps=2, guidance=3.0, seed=0, suffix=frames)
    pipe.window("a red circle", width=64, height=64, frames=9, steps=2, guidance=3.0, seed=0, prefix=frames[:1])
    pipe.window("a red circle", width=64, height=64, frames=9, steps=2, guidance=3.0, seed=0)
    monkeypatch.setattr(P, "PREFIX_GUIDANCE", ())
    pipe.window("a red circle", width=64, height=64, frames=9, steps=2, guidance=3.0, seed=0, prefix=frames[:1])
    assert seen[0].flatten().tolist() == [3.0, 1.0, 3.0]  # the latent frame before the suffix
    assert seen[1].flatten().tolist() == [3.0, 1.0, 3.0]  # the latent frame after the prefix
    assert seen[2] == seen[3] == 3.0  # nothing known, or no prefix rule: the plain number


def test_remix_strengths_and_lengths(pipe, text_only):
    clip = _clip(12)
    kept = pipe.remix(clip, "a blue square instead", strength=0, **SIZE)
    assert np.array_equal(kept, pipe.fit_video(clip, 32, 32))
    full = pipe.remix(clip, "a blue square instead", strength=1.0, seed=4, **SIZE)
    half = pipe.remix(clip, "a blue square instead", strength=0.5, seed=4, **SIZE)
    assert full.shape == half.shape == (12, 32, 32, 3)
    # Strength 1 starts from pure noise and knows no frame: the same as text-to-video with that seed.
    assert np.array_equal(full, pipe("a blue square instead", num_frames=12, seed=4, **SIZE))
    assert not np.array_equal(half, full)  # below 1 the source shows through
    long = pipe.remix(_clip(30), "a blue square instead", strength=0.5, **SIZE)  # longer than a window
    assert long.shape == (30, 32, 32, 3)
    # A text-only model remixes a clip that fits one window (no frame is known, only a starting point).
    assert text_only.remix(clip, "a blue square instead", strength=0.5, **SIZE).shape == (12, 32, 32, 3)


def test_connect_puts_a_transition_between_the_clips(pipe):
    a, b = _clip(6, seed=1), _clip(7, seed=2)
    # The longest transition: one window less a's 5 context frames and b's 4 head frames = 8 frames = 1 s.
    assert pipe.window_frames - CONTEXT_FRAMES - SUFFIX_FRAMES == 8
    out = pipe.connect(a, b, "the circle turns blue", seconds=1, **SIZE)
    assert out.shape == (6 + 8 + 7, 32, 32, 3)
    assert np.array_equal(out[:6], a) and np.array_equal(out[-7 + SEAM_BLEND:], b[SEAM_BLEND:])
    tiny = pipe.connect(a[:1], b[:2], "the circle turns blue", seconds=0.5, **SIZE)  # 1-frame prefix, short head
    assert tiny.shape == (1 + 4 + 2, 32, 32, 3)
    assert np.array_equal(tiny[:1], a[:1]) and np.array_equal(tiny[-2:], b[:2])


def test_a_transition_starts_from_the_cross_fade_of_its_two_sides(pipe, monkeypatch):
    # connect's strength reaches the window as SDEdit from a cross-fade of a's last frame into b's first;
    # strength 1 samples from noise (no init).
    calls, real = [], Pipeline.window

    def window(self, prompt, **kw):
        calls.append(kw)
        return real(self, prompt, **kw)

    monkeypatch.setattr(Pipeline, "window", window)
    a, b = _clip(6, seed=1), _clip(7, seed=2)
    pipe.connect(a, b, "x", seconds=1, strength=0.5, **SIZE)
    pipe.connect(a, b, "x", seconds=1, strength=1.0, guidance=3.0, **SIZE)
    (half, full) = calls
    assert half["strength"] == 0.5 and full["init"] is None
    # connect guides its transition at TRANSITION_GUIDANCE unless told otherwise, not at the model's 5
    assert half["guidance"] == TRANSITION_GUIDANCE == 1.0 and full["guidance"] == 3.0
    init = half["init"]
    P, M = CONTEXT_FRAMES, 8
    assert init.shape == (P + M + SUFFIX_FRAMES, 32, 32, 3)
    # a's last frame over the known prefix, an eased dissolve over the 8 frames to make, b's first frame after
    assert all(np.array_equal(f, a[-1]) for f in init[:P]) and all(np.array_equal(f, b[0]) for f in init[P + M:])
    a0, b0 = a[-1].astype(np.float64), b[0].astype(np.float64)
    share = [float(((f - a0) * (b0 - a0)).sum() / ((b0 - a0) ** 2).sum()) for f in init[P - 1:P + M + 1]]
    steps = np.diff(share)
    assert share[0] == 0 and share[-1] == 1 and (steps > 0).all()
    assert steps[0] < 0.05 and steps[-1] < 0.05 and steps.max() > 1.5 / (M + 1)  # at rest at both ends


def test_dissolve_is_eased_and_symmetric():
    w = dissolve(8).astype(np.float64)
    assert w.shape == (8,) and 0 < w[0] < 0.02 and 0.98 < w[-1] < 1
    assert np.allclose(w + w[::-1], 1, atol=1e-6)  # symmetric about the middle
    steps = np.diff(np.concatenate([[0], w, [1]]))
    assert (steps > 0).all() and steps[0] < steps[4] / 10 and steps[4] > 1 / 9  # small at the ends
    assert dissolve(0).shape == (0,)


def test_loop_lengths(pipe):
    assert pipe.loop("a red circle spins", seconds=2, **SIZE).shape == (16, 32, 32, 3)  # the shortest loop
    assert pipe("a red circle spins", loop=True, seconds=3, **SIZE).shape == (24, 32, 32, 3)


def test_a_loop_leaves_out_the_opening_frames_and_returns_to_its_new_first_frame(pipe, monkeypatch):
    """The clip's first LOOP_SKIP frames (frame 0 is coded alone and steps further) are not in the loop, and the
    transition leads back to the first frame that is."""
    from moviola.pipeline import LOOP_SKIP

    assert LOOP_SKIP >= 1
    made = {}

    def forward(self, prompt, total, **kw):  # frame k is filled with k: where each frame went is readable
        made["total"] = total
        yield np.broadcast_to(np.arange(total, dtype=np.uint8)[:, None, None, None], (total, 32, 32, 3)).copy()

    def transition(self, a, b, prompt, frames, **kw):
        made["b0"] = int(b[0, 0, 0, 0])
        return np.full((int(frames), 32, 32, 3), 200, np.uint8), b[:3].copy()

    monkeypatch.setattr(Pipeline, "_forward", forward)
    monkeypatch.setattr(Pipeline, "_transition", transition)
    out = pipe.loop(P, seconds=3, **SIZE)  # 24 frames: 16 of the clip, then an 8-frame way back
    assert made["total"] == 16 + LOOP_SKIP and made["b0"] == LOOP_SKIP
    assert out.shape == (24, 32, 32, 3)
    assert list(out[:16, 0, 0, 0]) == list(range(LOOP_SKIP, LOOP_SKIP + 16)) and (out[16:] == 200).all()


@pytest.mark.parametrize("transition", ["cut", "continue"])
def test_storyboard_with_image_cards(pipe, transition):
    img1, img2 = _image(seed=4), _image(seed=5)
    cards = [Card(0, "a red circle falls", image=img1), Card(1, "a blue square spins"),
             Card(1.5, "a green triangle grows", image=img2)]
    chunks = list(pipe.storyboard(cards, seconds=4, transition=transition, **SIZE))  # last segment > a window
    clip = np.concatenate(chunks)
    assert clip.shape == (32, 32, 32, 3) and len(chunks) >= 4
    assert np.array_equal(clip[0], pipe.fit_image(img1, 32, 32))
    assert np.array_equal(clip[12], pipe.fit_image(img2, 32, 32))  # card 3 starts at 1.5 s = frame 12


def test_a_continued_storyboard_starts_each_card_from_the_last_frame_before_it(pipe, monkeypatch):
    """'continue' carries exactly one frame across a card change (the new prompt is free to change the
    scene); 'cut' carries none; inside a card, windows still carry their usual context."""
    seen = []
    forward = Pipeline._forward

    def spy(self, prompt, total, *, tail, **kw):
        seen.append((prompt, None if tail is None else tail.copy()))
        return forward(self, prompt, total, tail=tail, **kw)

    monkeypatch.setattr(Pipeline, "_forward", spy)
    cards = [Card(0, "a red circle falls"), Card(1, "a blue square spins")]
    clip = np.concatenate(list(pipe.storyboard(cards, seconds=2, transition="continue", **SIZE)))
    assert [p for p, _ in seen] == ["a red circle falls", "a blue square spins"]
    assert seen[0][1] is None and seen[1][1].shape == (1, 32, 32, 3)
    assert np.array_equal(seen[1][1][0], clip[7])  # the first card's last frame
    seen.clear()
    list(pipe.storyboard(cards, seconds=2, transition="cut", **SIZE))
    assert all(t is None for _, t in seen)


def test_storyboard_of_text_cards_runs_on_a_text_only_model(text_only):
    cards = [Card(0, "a red circle falls"), Card(1, "a blue square spins")]
    clip = np.concatenate(list(text_only.storyboard(cards, seconds=2, **SIZE)))
    assert clip.shape == (16, 32, 32, 3)


def test_real_footage_of_any_shape_is_fitted_then_extended_and_remixed(pipe):
    clip = _clip(9, height=20, width=47)  # 2.35:1, odd sizes
    assert pipe.size_for(47, 20) == (96, 64) and pipe.size_for(20, 47) == (64, 96) and pipe.size_for(50, 50) == (64, 64)
    fitted = pipe.fit_video(clip, 96, 64)
    assert fitted.shape == (9, 64, 96, 3) and fitted.dtype == np.uint8
    ext = pipe.extend(clip, "the circle keeps moving", seconds=1)  # size: the trained one nearest 2.35:1
    assert ext.shape == (17, 64, 96, 3) and np.array_equal(ext[:9], fitted)
    assert pipe.remix(clip, "a blue square instead", strength=0.5).shape == (9, 64, 96, 3)
    out = pipe.image_to_video("a red circle falls", clip[0], num_frames=5, width=96, height=64)
    assert out.shape == (5, 64, 96, 3) and np.array_equal(out[0], fitted[0])


# --- validation -------------------------------------------------------------------------------------

@pytest.fixture
def no_sampling(monkeypatch):
    """Every check must come before the first window is sampled."""

    def window(*args, **kwargs):
        raise AssertionError("a window was sampled before the request was checked")

    monkeypatch.setattr(Pipeline, "window", window)


P = "a red circle falls"
IMG, CLIP = _image(), _clip(6)
BAD_REQUESTS = {
    "strength below 0": (lambda p: p.remix(CLIP, P, strength=-0.1, **SIZE), "strength must be between 0 and 1"),
    "strength above 1": (lambda p: p.remix(CLIP, P, strength=1.5, **SIZE), "strength must be between 0 and 1"),
    "strength nan": (lambda p: p.remix(CLIP, P, strength=float("nan"), **SIZE), "strength must be between 0 and 1"),
    "strength text": (lambda p: p.remix(CLIP, P, strength="0.5", **SIZE), "strength must be between 0 and 1"),
    "connect strength 0": (lambda p: p.connect(CLIP, CLIP, P, strength=0, **SIZE), "strength must be above 0 and at most 1"),
    "connect strength above 1": (lambda p: p.connect(CLIP, CLIP, P, strength=2, **SIZE), "strength must be above 0"),
    "no cards": (lambda p: p.storyboard([], seconds=2, **SIZE), "at least one card"),
    "unordered cards": (lambda p: p.storyboard([Card(0, "a"), Card(2, "b"), Card(1, "c")], seconds=3, **SIZE),
                        "in order of start time without overlap: card 3 starts at 1 s"),
    "overlapping cards": (lambda p: p.storyboard([Card(0, "a"), Card(1, "b"), Card(1, "c")], seconds=3, **SIZE),
                          "without overlap: card 3"),
    "first card late": (lambda p: p.storyboard([Card(0.5, "a"), Card(1, "b")], seconds=3, **SIZE),
                        "first card must start at 0 s, got 0.5"),
    "negative start": (lambda p: p.storyboard([Card(-1, "a")], seconds=3, **SIZE), "start must be a number"),
    "board too long": (lambda p: p.storyboard([Card(0, "a"), Card(5, "b")], seconds=7, **SIZE),
                       "the board lasts 7 s; this model makes at most 6 s"),
    "board ends early": (lambda p: p.storyboard([Card(0, "a"), Card(3, "b")], seconds=2, **SIZE),
                         "the board ends at 2 s, not after its last card starts"),
    "unknown transition": (lambda p: p.storyboard([Card(0, "a")], seconds=2, transition="fade", **SIZE),
                           "transition must be 'cut' or 'continue'"),
    "bad card image": (lambda p: p.storyboard([Card(0, "a"), Card(1, "b", image=IMG.astype(np.float32))],
                                              seconds=2, **SIZE),
                       "card 2 image is not an image to condition on: float image must lie in \\[0, 1\\]"),
    "clip too long": (lambda p: p("a", seconds=7, **SIZE), "seconds must be more than 0 and at most 6"),
    "stream too long": (lambda p: p.stream("a", seconds=6.5, **SIZE), "at most 6"),
    "zero seconds": (lambda p: p("a", seconds=0, **SIZE), "seconds must be more than 0"),
    "too many frames": (lambda p: p("a", num_frames=49, **SIZE), "num_frames must be 1 to 48"),
    "extension too long": (lambda p: p.extend(CLIP, P, seconds=7, **SIZE), "at most 6"),
    "two images too far apart": (lambda p: p.image_to_video(P, IMG, last_image=IMG, seconds=3, **SIZE),
                                 "at most 2"),
    "image too small": (lambda p: p.image_to_video(P, _image(4, 40), **SIZE), "image is 40x4: too small"),
    "last image too small": (lambda p: p.image_to_video(P, IMG, last_image=_image(40, 5), **SIZE),
                             "last_image is 5x40: too small"),
    "video too small": (lambda p: p.extend(_clip(6, 6, 30), P, width=32, height=32), "video is 30x6: too small"),
    "float image": (lambda p: p.image_to_video(P, IMG.astype(np.float32), **SIZE),
                    "image is not an image to condition on: float image must lie in \\[0, 1\\]"),
    "RGBA image": (lambda p: p(P, image=np.zeros((32, 32, 4), np.uint8), **SIZE),
                   "image is not an image to condition on: .* \\(RGBA: drop or composite the alpha first"),
    "image as a clip": (lambda p: p.image_to_video(P, CLIP, **SIZE), "image must have shape \\(H, W, 3\\)"),
    "float video": (lambda p: p.extend(CLIP.astype(np.float64), P, **SIZE),
                    "video must be a \\(T, H, W, 3\\) uint8 RGB array with T >= 1, got float64"),
    "video as an image": (lambda p: p.remix(IMG, P, strength=0.5), "video must be a \\(T, H, W, 3\\)"),
    "empty video": (lambda p: p.extend(CLIP[:0], P, **SIZE), "T >= 1"),
    "second clip bad": (lambda p: p.connect(CLIP, CLIP[0], P, **SIZE), "second clip must be a \\(T, H, W, 3\\)"),
    "transition too long": (lambda p: p.connect(CLIP, CLIP, P, seconds=2, **SIZE),
                            "a transition can be at most 1 s with this model \\(8 frames\\), asked for 2 s"),
    "loop too short": (lambda p: p.loop(P, seconds=1.5, **SIZE), "a loop needs at least 16 frames \\(2 s at 8 fps\\), asked for 12"),
    # wrong types: one line naming the argument, not a TypeError from deep in torch (found by a review)
    "float steps": (lambda p: p(P, steps=2.5, **SIZE), "steps must be an int, got float 2.5"),
    "string seconds": (lambda p: p(P, seconds="2", **SIZE), "seconds must be a number, got str"),
    "no seed": (lambda p: p(P, seed=None, **SIZE), "seed must be an int, got NoneType"),
    "huge seed": (lambda p: p(P, seed=2**64, **SIZE), "seed must be from 0 to"),
    "no prompt": (lambda p: p(None, **SIZE), "prompt must be a string, got NoneType"),
    "tuple card": (lambda p: p.storyboard([(0, P)], seconds=2, **SIZE), "card 1 must be a moviola.pipeline.Card"),
    "loop from an image": (lambda p: p(P, image=IMG, loop=True, **SIZE), "a loop cannot also start or end"),
    "no image": (lambda p: p.image_to_video(P, None, **SIZE), "needs image, last_image or both"),
    "bad size": (lambda p: p.image_to_video(P, IMG, width=40, height=32), "width 40 is outside"),
    "unknown sampler": (lambda p: p(P, sampler="rk4", **SIZE), "unknown sampler 'rk4'; choose one of euler"),
    "unknown sampler in extend": (lambda p: p.extend(CLIP, P, sampler="ddim", **SIZE), "unknown sampler 'ddim'"),
    "unknown sampler in remix": (lambda p: p.remix(CLIP, P, sampler="ddim", **SIZE), "unknown sampler 'ddim'"),
    "unknown sampler in a board": (lambda p: p.storyboard([Card(0, "a")], sampler="x", **SIZE), "unknown sampler"),
    "remix too long": (lambda p: p.remix(_clip(49), P, strength=0.5, **SIZE), "remix takes at most 6 s \\(48 frames at 8 fps\\)"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_fail_before_any_sampling(pipe, no_sampling, name):
    call, message = BAD_REQUESTS[name]
    with pytest.raises(GenerationError, match=message):
        call(pipe)


NEEDS_KNOWN_FRAMES = {
    "image_to_video": lambda p: p.image_to_video(P, IMG, **SIZE),
    "last image": lambda p: p(P, last_image=IMG, seconds=1, **SIZE),
    "extend": lambda p: p.extend(CLIP, P, **SIZE),
    "extend backward": lambda p: p.extend(CLIP, P, backward=True, **SIZE),
    "connect": lambda p: p.connect(CLIP, CLIP, P, **SIZE),
    "loop": lambda p: p.loop(P, seconds=3, **SIZE),
    "long clip": lambda p: p(P, seconds=5, **SIZE),
    "long stream": lambda p: p.stream(P, seconds=5, **SIZE),
    "long remix": lambda p: p.remix(_clip(30), P, strength=0.5, **SIZE),
    "board with an image": lambda p: p.storyboard([Card(0, "a", image=IMG)], seconds=1, **SIZE),
    "board continued": lambda p: p.storyboard([Card(0, "a"), Card(1, "b")], seconds=2, transition="continue", **SIZE),
    "board with a long segment": lambda p: p.storyboard([Card(0, "a")], seconds=3, **SIZE),
}


@pytest.mark.parametrize("name", list(NEEDS_KNOWN_FRAMES))
def test_a_text_only_model_refuses_known_frames_before_sampling(text_only, no_sampling, name):
    with pytest.raises(GenerationError, match="needs a model trained with known frames.*configs/dit/cond.toml"):
        NEEDS_KNOWN_FRAMES[name](text_only)


# --- bugs these tests found (fixed in pipeline.py) ----------------------------------------------

def test_a_loop_that_cannot_fit_its_transition_fails_before_sampling(no_sampling):
    short = _pipe(cond=True, max_seconds=1.0)  # 9-frame windows: no room for 5 + 8 + 4 frames
    with pytest.raises(GenerationError, match="transition"):
        short.loop(P, seconds=3, **SIZE)


def test_cards_closer_than_a_frame_are_refused(pipe, no_sampling):
    cards = [Card(0, "a", image=IMG), Card(0.05, "b")]  # 0.05 s at 8 fps: both start on frame 0
    with pytest.raises(GenerationError, match="card 2"):
        pipe.storyboard(cards, seconds=2, **SIZE)


def test_a_storyboard_length_that_is_not_a_number_is_a_generation_error(pipe, no_sampling):
    with pytest.raises(GenerationError, match="seconds must be a number, got str"):
        pipe.storyboard([Card(0, "a")], seconds="3", **SIZE)  # a raw TypeError before


def test_no_duration_is_a_generation_error(pipe, no_sampling):
    with pytest.raises(GenerationError):
        pipe(P, seconds=None, **SIZE)


def test_eval_abilities_reports_every_ability(pipe, monkeypatch):
    # The report `moviola eval abilities` prints, on the tiny random model: every ability's figures, and as
    # many long clips as asked for, more than the 2n prompts the other abilities draw.
    from moviola.eval import abilities

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(lambda cls, d: pipe))
    res = abilities.evaluate_abilities("unused", n=1, long_seconds=2.0, long_n=3, memory=False)
    for k in ("image_to_video", "extend", "extend_backward", "connect", "connect_longer", "connect_same_scene"):
        assert res[k]["seam_ratio"]["n"] == (2 if k.startswith("connect") else 1)
    assert res["loop"]["wrap_ratio"]["n"] == 1
    assert set(res["storyboard"]) == {"single_prompt", "cut", "continue"}
    assert len(res["long"]["clips"]) == 3 and res["long"]["color"]["first_8s"] is not None
    json.dumps(res, allow_nan=False)  # strict JSON: a seam's given frames kept exactly are 99 dB, not Infinity
    assert res["extend"]["given_psnr_output"]["median"] == 99.0
    with pytest.raises(ValueError, match="more than 8"):  # the memory of an 8 s clip against itself
        abilities.evaluate_abilities("unused", n=1, long_seconds=8.0)
    with pytest.raises(ValueError, match="at most 6 for this model"):  # before any ability is run
        abilities.evaluate_abilities("unused", n=1, long_seconds=30.0, memory=False)


def test_seam_measures_see_a_jump_moved_next_to_the_seam():
    # A still clip with one jump of 30 grey levels: the step across the seam alone misses it one frame later,
    # the measures after a prefix (the PREFIX_SPREAD steps after) and around a suffix do not.
    from moviola.eval.abilities import prefix_seam_ratio, seam_region_ratio
    from moviola.pipeline import PREFIX_SPREAD

    levels = np.array([100.0] * 8 + [101.0] * 2 + [131.0] * 8)
    clip = np.broadcast_to(levels[:, None, None, None], (len(levels), 4, 4, 3)).astype(np.uint8)
    seam = 8  # frames 0-7 given; the step across is 1 level, the jump two steps later (frames 9 to 10)
    assert seam_region_ratio(clip, seam, after=0, before=0) == 2.0  # 1 level over the 0.5 floor
    assert prefix_seam_ratio(clip, seam) == 60.0  # the jump, inside the PREFIX_SPREAD steps after the seam
    assert PREFIX_SPREAD == 3 and prefix_seam_ratio(clip, seam + 3) == 0.0
    assert seam_region_ratio(clip, 13) == 60.0 and seam_region_ratio(clip, 14) == 0.0  # 3 steps before a suffix


def test_objects_weights_draw_clips_by_their_object_count(tmp_path):
    import moviola.train.dit as T
    from moviola.data.latent_cache import LatentCache, build_world_cache, buckets_of

    torch.manual_seed(0)
    data = T.DataConfig(n_clips=12, buckets=[(32, 32, 1.0, 1.0)], holdout="")
    build_world_cache(tmp_path, data, CausalVAE(VAE_PRESETS["tiny"]), HashText())
    cache = LatentCache(tmp_path, buckets_of(data))
    counts = [len(r["spec"]["objects"]) for r in cache.rows[0]]
    assert 1 in counts and max(counts) > 1
    optim = dataclasses.replace(T.TrainDiTConfig().optim, batch_size=8)

    def drawn(weights):  # object counts of the clips in 6 batches
        cfg = T.TrainDiTConfig(data=dataclasses.replace(data, objects_weights=weights), optim=optim)
        batches, out = T.Batches(cache, cfg, (1, 2, 2)), []
        for step in range(6):
            x0 = batches.batch(step)["x0"]
            out += [counts[next(j for j, lat in enumerate(cache.latents[0]) if torch.equal(x, lat.float()))]
                    for x in x0]
        return out

    assert set(drawn([1.0, 0.0, 0.0])) == {1}
    assert 1 not in drawn([0.0, 1.0, 1.0])
    # unweighted, a batch holds each clip once while the bucket has enough (12 clips, batches of 8): drawn with
    # replacement, a clip had come twice in about half the steps of a small footage set, often on two ranks at once
    batches = T.Batches(cache, T.TrainDiTConfig(data=data, optim=optim), (1, 2, 2))
    for step in range(20):
        x0 = batches.batch(step)["x0"]
        assert len({x.numpy().tobytes() for x in x0}) == len(x0) == 8
    assert len(set(drawn([]))) > 1  # empty: every clip alike
    for bad in ([1.0], [0.0, 0.0, 0.0], [1.0, -1.0, 1.0]):
        with pytest.raises(ValueError, match="objects_weights"):
            T.Batches(cache, T.TrainDiTConfig(data=dataclasses.replace(data, objects_weights=bad), optim=optim),
                      (1, 2, 2))


def test_lora_on_a_pipeline_saves_merged_and_a_failed_load_changes_nothing(tmp_path):
    """Found by a review: save_pretrained after load_lora wrote a folder that would not load, and a load_lora
    refused for its lora.json's sampling had already put the adapter's weights in the DiT."""
    import copy

    from moviola.layout import read_config
    from moviola.models.lora import LoRAConfig, LoRAError, inject_lora, lora_modules, save_lora
    from moviola.pipeline import PipelineConfig

    pipe = _pipe(cond=False)
    lcfg = LoRAConfig(rank=2, targets=["attn.qkv", "mlp.fc2"])
    src = copy.deepcopy(pipe.dit)
    inject_lora(src, lcfg)
    with torch.no_grad():
        for m in lora_modules(src).values():
            m.lora_B.normal_(std=0.5)
    save_lora(src, tmp_path / "good", lcfg, extra={"sampling": {"guidance": 2.0}})
    save_lora(src, tmp_path / "bad", lcfg, extra={"sampling": {"guidance": -5}})
    kw = dict(width=32, height=32, seconds=1, seed=3)
    before = pipe("a red circle", **kw)
    with pytest.raises(LoRAError, match="guidance must be >= 0"):
        pipe.load_lora(tmp_path / "bad")
    assert np.array_equal(pipe("a red circle", **kw), before) and not lora_modules(pipe.dit)
    pipe.load_lora(tmp_path / "good")
    with_lora = pipe("a red circle", **kw)
    assert pipe.config.guidance == 2.0 and not np.array_equal(with_lora, before)
    pipe.save_pretrained(tmp_path / "model")
    loaded = Pipeline(CausalVAE.from_pretrained(tmp_path / "model"), DiT.from_pretrained(tmp_path / "model"),
                      HashText(), PipelineConfig.from_dict(read_config(tmp_path / "model", "pipeline")))
    assert loaded.config.guidance == 2.0 and not lora_modules(loaded.dit)
    assert np.abs(loaded("a red circle", **kw).astype(int) - with_lora).mean() < 0.5  # merged = applied


def test_library_calls_check_their_arguments_and_hand_out_their_own_arrays(pipe, no_sampling, tmp_path):
    """From the library review: one side of a size alone, a transition of no length, a text fps and a non-text
    negative prompt are GenerationErrors before any work (they had been dropped, or tracebacks, or raised on the
    first chunk); images come as video_io takes them; the device is checked by name; a pipeline is not saved
    over a part's own folder."""
    clip = _clip(9)
    for call in (lambda: pipe.remix(clip, "x", width=64), lambda: pipe.extend(clip, "x", seconds=1, height=32)):
        with pytest.raises(GenerationError, match="give both width and height, or neither"):
            call()
    with pytest.raises(GenerationError, match="seconds must be a number"):
        pipe.connect(clip, clip, "x", seconds=None)
    with pytest.raises(GenerationError, match="fps must be a number"):
        pipe("x", fps="8")
    with pytest.raises(GenerationError, match="negative_prompt must be a string"):
        pipe.stream("x", negative_prompt=None)
    gray = np.linspace(0, 1, 40 * 40).reshape(40, 40)
    assert pipe.fit_image(gray, 32, 32).shape == (32, 32, 3)
    from PIL import Image

    palette = Image.new("P", (40, 40))
    palette.putpalette([255, 0, 0] * 256)
    assert pipe.fit_image(palette, 32, 32)[0, 0].tolist() == [255, 0, 0]  # its colours, not its indices
    with pytest.raises(GenerationError, match="RGBA: drop or composite the alpha"):
        pipe.fit_image(np.zeros((40, 40, 4), np.uint8), 32, 32)
    with pytest.raises(ValueError, match="device 'bogus' is not a device"):
        Pipeline.from_pretrained(tmp_path, device="bogus")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "CausalVAE"}')
    with pytest.raises(ValueError, match="CausalVAE's config"):
        pipe.save_pretrained(tmp_path / "vae")


def test_streamed_chunks_are_the_callers_to_change(pipe):
    """Drawing on a yielded chunk in place (a watermark) must not change what is made next: the windows had
    kept views of the chunks as their context."""
    ref = pipe("a red circle", width=32, height=32, seconds=5, seed=3)
    chunks = pipe.stream("a red circle", width=32, height=32, seconds=5, seed=3)
    first = next(chunks)
    first[:] = 0
    assert np.array_equal(np.concatenate(list(chunks)), ref[len(first):])


def test_remix_stream_checks_before_the_first_chunk(pipe, no_sampling):
    with pytest.raises(GenerationError, match="remix takes at most"):
        pipe.remix_stream(_clip(49), "x", strength=0.5, width=32, height=32)


def test_remix_stream_yields_window_by_window_what_remix_returns(pipe):
    """moviola remix and the server write a long remix as it is made (it had been held whole to the end)."""
    src = _clip(40)
    chunks = list(pipe.remix_stream(src, "a blue square", strength=0.5, width=32, height=32, seed=2))
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == len(src)
    assert np.array_equal(np.concatenate(chunks), pipe.remix(src, "a blue square", strength=0.5, width=32,
                                                             height=32, seed=2))


def _count_windows(monkeypatch) -> list:
    """Record each window the pipeline samples (a spy on Pipeline.window)."""
    calls, real = [], Pipeline.window

    def window(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(Pipeline, "window", window)
    return calls


def test_streams_hand_out_each_window_before_making_the_next(monkeypatch):
    """remix_stream and extend_stream really stream: the first chunk comes after one window is sampled, not
    after the whole clip (the other tests compare a stream with its own concatenation, which a stream that
    made everything first would pass too)."""
    pipe = _pipe(cond=True)
    calls = _count_windows(monkeypatch)
    stream = pipe.remix_stream(_clip(40), "a blue square", strength=0.5, seed=2, **SIZE)
    assert calls == []  # nothing made before the first chunk is asked for
    next(stream)
    assert len(calls) == 1
    calls.clear()
    stream = pipe.extend_stream(_clip(6), "x", seconds=3, **SIZE)
    next(stream)  # the source, as it was
    assert calls == []
    next(stream)
    assert len(calls) == 1


def test_model_folder_settings_change_what_is_sampled():
    """A negative prompt, the folder's noise_frame_corr and its guidance_interval each reach the sampler (tests
    had read them back from config.json only)."""
    pipe = _pipe(cond=False)
    kw = dict(seconds=1, seed=3, **SIZE)
    base = pipe("a red circle", **kw)
    assert np.array_equal(pipe("a red circle", **kw), base)
    assert not np.array_equal(pipe("a red circle", negative_prompt="blue", **kw), base)
    plain = pipe.config
    for change in (dict(noise_frame_corr=0.5), dict(guidance_interval=(0.0, 0.4))):
        pipe.config = dataclasses.replace(plain, **change)
        assert not np.array_equal(pipe("a red circle", **kw), base), change
    pipe.config = plain


def test_a_vae_of_other_factors_is_refused():
    """The window arithmetic is the 4x temporal, 8x spatial VAE's: one that halves time only once had been
    accepted, and extend then marked 2 latent frames known for 3 given frames (one regenerated in silence)."""
    vae = CausalVAE(dataclasses.replace(VAE_PRESETS["tiny"], temporal_downsample=(False, True, False)))
    with pytest.raises(ValueError, match="compresses 2x in time.*need 4x and 8x"):
        Pipeline(vae, random_dit(5), HashText(), PipelineConfig())


@pytest.mark.parametrize("limits", [dict(min_side=32, max_side=128, side_multiple=16),
                                    dict(min_side=128, max_side=512, side_multiple=16),
                                    dict(min_side=48, max_side=192, side_multiple=48)])
def test_footage_is_sized_alike_by_the_pipeline_and_the_server(limits):
    """The size made from footage of any shape is one the model allows, and the CLI (Pipeline.size_for) and the
    API (ModelInfo.size_for) choose the same: the pipeline's own copy had put 1080p footage into 128x128 for a
    model of sides 128-512 (the server: 512x288) and chosen 96x64 for one of multiples of 48, then refused it."""
    from pathlib import Path

    from moviola.server.generate import ModelInfo

    pipe = _pipe(cond=True)
    pipe.config = dataclasses.replace(pipe.config, **limits)
    info = ModelInfo(name="m", directory=Path("."), **limits)
    for w, h in [(1920, 1080), (1080, 1920), (640, 480), (2350, 1000), (97, 61), (64, 64)]:
        got = pipe.size_for(w, h)
        assert got == info.size_for(w, h)
        assert info.supports(*got), (limits, (w, h), got)
    assert pipe.size_for(1920, 1080) == {128: (96, 64), 512: (512, 288), 192: (192, 96)}[limits["max_side"]]


def test_a_save_that_fails_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """A model folder is saved whole or not at all: a save that fails (or is killed) after some files had
    been written left new weights under the old config.json, captions and card, a mixed folder that loads."""
    import hashlib

    pipe = _pipe(cond=True)
    d = tmp_path / "m"
    pipe.save_pretrained(d)

    def digest():
        return {str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.rglob("*"))
                if f.is_file()}

    before = digest()
    with torch.no_grad():
        for p in pipe.dit.parameters():
            p.add_(0.5)  # other weights, other settings: a different save
    pipe.config = dataclasses.replace(pipe.config, guidance=2.0)

    def boom(self, folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Pipeline, "_save_record", boom)  # after both parts and config.json were written
    with pytest.raises(OSError, match="No space"):
        pipe.save_pretrained(d)
    assert digest() == before  # nothing of the failed save, and no temp file, is in the folder
    monkeypatch.undo()
    # the records an earlier save left go with the save that replaces them, not before its files land
    (d / "provenance.jsonl").write_text('{"path": "a.mp4"}\n')
    real = Pipeline._save_record

    def record_then_fail(self, folder):
        real(self, folder)  # removes provenance.jsonl (this pipeline has none), staged
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Pipeline, "_save_record", record_then_fail)
    pipe.source_dir = tmp_path  # a folder it was "loaded from", with no records: the save removes d's
    with pytest.raises(OSError, match="No space"):
        pipe.save_pretrained(d)
    assert (d / "provenance.jsonl").is_file() and not list(d.rglob(".*.tmp-*"))
    monkeypatch.undo()
    pipe.source_dir = None
    pipe.save_pretrained(d)
    from moviola.layout import read_config

    assert read_config(d, "pipeline")["guidance"] == 2.0  # (its stand-in text encoder is not one a folder names)


def test_the_library_leaves_the_callers_state_and_gets_what_it_is_given(pipe, recwarn):
    """Found by a review of the Python API: looping over a storyboard's chunks kept gradients off in the caller's
    own code (a no_grad block around its yields); frames came back column-blocked (not C-contiguous: a write to a
    pipe or file refused them); remix's length limit used the model's frame rate, not the call's; a text encoder
    of another width loaded and failed on the first call inside the DiT; "cpu:0" read as damaged weights."""
    from moviola.pipeline import Card, _usable_device

    board = pipe.storyboard([Card(0.0, "a red circle falls"), Card(1.0, "a blue square spins")], seconds=2, **SIZE)
    for chunk in board:
        assert torch.is_grad_enabled()  # the caller's mode, between chunks
        assert chunk.flags.c_contiguous
        break
    assert torch.is_grad_enabled()
    assert pipe("a red circle falls", seconds=1, **SIZE).flags.c_contiguous
    limit = round(pipe.config.max_total_seconds * 24)
    with pytest.raises(GenerationError, match=f"at most 6 s \\({limit} frames at 24 fps\\)"):
        pipe.remix(_clip(limit + 1), P, strength=0.5, fps=24, **SIZE)
    with pytest.raises(ValueError, match=f"makes {TEXT_DIM + 4}-wide token embeddings but the DiT reads {TEXT_DIM}"):
        Pipeline(pipe.vae, pipe.dit, HashText(dim=TEXT_DIM + 4), pipe.config)
    assert _usable_device("cpu:0") == torch.device("cpu")
    with pytest.raises(GenerationError, match="strength must be between 0 and 1, got True"):
        pipe.remix(CLIP, P, strength=True, **SIZE)
    with pytest.raises(GenerationError, match="backward must be True or False, got 'no'"):
        pipe.extend(CLIP, P, seconds=1, backward="no", **SIZE)


def test_a_prompt_longer_than_the_encoder_reads_is_said(tmp_path, capsys):
    """A prompt past the text encoder's max_length tokens: a PromptTruncated warning (one line from the CLI), where
    its end had been dropped without a word (two prompts that differ only after token 32 make the same clip)."""
    import warnings

    from moviola.models.text import PromptTruncated, load_text_encoder

    enc = load_text_encoder()
    long = " ".join(["a large red circle moves right"] * 8)
    assert enc.token_count(long) > enc.max_length
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        enc.warn_if_truncated(long)
        enc.warn_if_truncated("a large red circle moves right")
    assert len(got) == 1 and issubclass(got[0].category, PromptTruncated)
    assert f"reads the first {enc.max_length}" in str(got[0].message)


def test_window_lengths_and_the_frame_budget_hold_at_their_edges(pipe, monkeypatch):
    """From a review of the window arithmetic: a backward extension whose last window makes one new frame asked
    for a 5-frame window (every window is at least 9); a model config whose window is under 9 frames made long
    clips loop for ever (now refused); 6 s at 8.1 fps made 49 frames of a 48-frame budget."""
    asked = []
    real = Pipeline.window

    def window(self, *a, **k):
        asked.append(k["frames"])
        return real(self, *a, **k)

    monkeypatch.setattr(Pipeline, "window", window)
    W = pipe.window_frames
    for new in (1, W - 4 + 1):  # one new frame in the last window
        asked.clear()
        out = pipe.extend(CLIP, P, seconds=new / 8, backward=True, steps=1, **SIZE)
        assert len(out) == len(CLIP) + new and min(asked) >= 9 and max(asked) <= W, asked
    with pytest.raises(ValueError, match="a window needs 9"):
        PipelineConfig(max_seconds=0.5, max_total_seconds=6.0)
    with pytest.raises(GenerationError, match="49 frames; this model makes at most 48"):
        pipe.stream(P, seconds=6, fps=8.1, **SIZE)
