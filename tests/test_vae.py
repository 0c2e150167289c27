"""The causal video VAE: shapes, causality, streaming == one-shot, constant stream state, files, tiling,
and that a tiny model can learn at all. Tiny config, CPU, fixed seeds."""

import json

import pytest
import torch

from moviola.models.vae import PRESETS, CausalVAE, DiagonalGaussian, StreamState, VAEConfig
from tensors import randn  # tests/tensors.py


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae() -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(PRESETS["tiny"]).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item() if a.numel() else 0.0


# --- shapes and config ---------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_shapes_round_trip(vae, frames):
    x = randn(2, 3, frames, 40, 24)  # 40x24 pixels -> 5x3 latents
    post = vae.encode(x)
    assert post.mean.shape == post.logvar.shape == (2, 4, 1 + (frames - 1) // 4, 5, 3)
    assert vae.latent_shape(frames, 40, 24) == post.mean.shape[1:]
    recon, _ = vae(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape
    assert vae.decode(post.mean).shape == x.shape


def test_bad_input_sizes_are_rejected(vae):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(randn(1, 3, 6, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(randn(1, 3, 5, 20, 16))


def test_config_checks_keys_and_types():
    d = PRESETS["default"].to_dict()
    assert VAEConfig.from_dict(json.loads(json.dumps(d))) == PRESETS["default"]  # lists come back as tuples
    with pytest.raises(ValueError, match="'chanel_mult'"):
        VAEConfig.from_dict({**d, "chanel_mult": [1, 2]})
    with pytest.raises(ValueError, match="base_channels"):
        VAEConfig.from_dict({**d, "base_channels": "16"})
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(temporal_downsample=(True,))


def test_preset_sizes():
    assert CausalVAE(PRESETS["tiny"]).num_params() < 10_000
    assert CausalVAE(PRESETS["default"]).num_params() <= 2_000_000


# --- causality -----------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 4, 5, 11, 16])
def test_encoder_is_causal(vae, t):
    x = randn(1, 3, 17, 16, 16)
    x2 = x.clone()
    x2[:, :, t] += 1.0
    with torch.no_grad():
        a, b = vae.encode(x), vae.encode(x2)
    first = (t + 3) // 4  # latent frame j sees input frames <= 4j
    assert max_diff(a.mean[:, :, :first], b.mean[:, :, :first]) == 0.0
    assert max_diff(a.logvar[:, :, :first], b.logvar[:, :, :first]) == 0.0
    assert max_diff(a.mean[:, :, first], b.mean[:, :, first]) > 1e-4  # and does see frame 4j


@pytest.mark.parametrize("j", [0, 1, 2, 4])
def test_decoder_is_causal(vae, j):
    z = randn(1, 4, 5, 2, 2)
    z2 = z.clone()
    z2[:, :, j] += 1.0
    with torch.no_grad():
        a, b = vae.decode(z), vae.decode(z2)
    first = max(4 * j - 3, 0)  # latent j decodes to frames 4j-3 .. 4j
    assert max_diff(a[:, :, :first], b[:, :, :first]) == 0.0
    assert max_diff(a[:, :, first], b[:, :, first]) > 1e-4


# --- streaming -----------------------------------------------------------------------------------

def test_stream_encode_equals_one_shot(vae):
    x = randn(2, 3, 25, 24, 16)
    with torch.no_grad():
        whole = vae.encode(x)
    chunked = vae.encode_video(x, chunked=True)
    assert max_diff(whole.mean, chunked.mean) <= 1e-4
    assert max_diff(whole.logvar, chunked.logvar) <= 1e-4
    # any chunk sizes in, regrouped as 1, 8, 8, ... frames; one posterior per group out
    pieces = [x[:, :, a:b] for a, b in [(0, 3), (3, 10), (10, 12), (12, 25)]]
    parts = list(vae.encode_stream(iter(pieces), frames_per_chunk=8))
    assert [p.mean.shape[2] for p in parts] == [1, 2, 2, 2]
    assert max_diff(whole.mean, DiagonalGaussian.cat(parts).mean) <= 1e-4
    with pytest.raises(ValueError, match="left over"):
        list(vae.encode_stream([x[:, :, :7]]))


def test_stream_decode_equals_one_shot(vae):
    z = randn(2, 4, 7, 3, 2)  # -> 25 frames
    with torch.no_grad():
        whole = vae.decode(z)
    chunks = list(vae.decode_stream(iter([z[:, :, :3], z[:, :, 3:]])))
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4, 4, 4, 4]
    assert max_diff(whole, torch.cat(chunks, 2)) <= 1e-4
    assert max_diff(whole, vae.decode_video(z, chunked=True, latents_per_chunk=3)) <= 1e-4


def test_stream_state_is_constant(vae):
    """Decoding a long clip keeps the same cache size: memory does not grow with length."""
    state = StreamState()
    sizes = []
    with torch.no_grad():
        for i in range(31):
            frames = vae.decode_chunk(randn(1, 4, 1, 2, 2, seed=i), state)
            assert frames.shape[2] == (1 if i == 0 else 4)
            sizes.append(state.num_elements())
    assert sizes[3] > 0 and sizes[3] == sizes[30]


def test_two_streams_do_not_interfere(vae):
    za, zb = randn(1, 4, 3, 2, 2, seed=1), randn(1, 4, 3, 2, 2, seed=2)
    sa, sb = StreamState(), StreamState()
    with torch.no_grad():
        outs_a, outs_b = [], []
        for t in range(3):  # interleave two streams through the same model
            outs_a.append(vae.decode_chunk(za[:, :, t:t + 1], sa))
            outs_b.append(vae.decode_chunk(zb[:, :, t:t + 1], sb))
        assert max_diff(torch.cat(outs_a, 2), vae.decode(za)) <= 1e-4
        assert max_diff(torch.cat(outs_b, 2), vae.decode(zb)) <= 1e-4


# --- files and latent statistics -----------------------------------------------------------------

def test_save_load_round_trip(vae, tmp_path):
    torch.manual_seed(3)
    model = CausalVAE(PRESETS["tiny"])
    model.set_latent_stats(torch.randn(4), torch.rand(4) + 0.5)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "vae.safetensors"]  # no temp files left
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["_class_name"] == "CausalVAE"
    assert meta["latent_std"] == pytest.approx(model.latent_std.tolist())

    loaded = CausalVAE.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert torch.equal(loaded.latent_mean, model.latent_mean) and torch.equal(loaded.latent_std, model.latent_std)
    z = randn(1, 4, 3, 2, 2)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), model.decode(z))
        x = randn(1, 3, 5, 16, 16)
        assert torch.equal(loaded.encode(x).mean, model.encode(x).mean)
    assert max_diff(loaded.denormalize(loaded.normalize(z)), z) <= 1e-5

    meta["kernel_size"] = 3
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'kernel_size'"):
        CausalVAE.from_pretrained(tmp_path)


def test_normalize_gives_unit_scale():
    model = CausalVAE(PRESETS["tiny"])
    z = randn(64, 4, 2, 3, 3) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1, 1) + 5.0
    dims = (0, 2, 3, 4)
    model.set_latent_stats(z.mean(dims), z.std(dims))
    n = model.normalize(z)
    assert n.mean(dims).abs().max() < 1e-4 and (n.std(dims) - 1).abs().max() < 1e-4


def test_posterior():
    g = DiagonalGaussian(torch.zeros(2, 3, 1, 2, 2), torch.zeros(2, 3, 1, 2, 2))
    assert g.kl().abs().max() == 0.0
    assert torch.equal(g.sample(torch.Generator().manual_seed(5)), g.sample(torch.Generator().manual_seed(5)))


# --- tiling --------------------------------------------------------------------------------------

def pointwise_copy(vae: CausalVAE) -> CausalVAE:
    """The same model with every spatial kernel cut to its centre tap: each output pixel then depends on
    one latent position only, so tiled and untiled processing must agree exactly."""
    model = CausalVAE(vae.config).eval()
    model.load_state_dict(vae.state_dict())
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv3d) and conv.kernel_size[1] == 3:
                centre = conv.weight[..., 1:2, 1:2].clone()
                conv.weight.zero_()
                conv.weight[..., 1:2, 1:2] = centre
    return model


def test_tiles_are_placed_and_blended_exactly(vae):
    model = pointwise_copy(vae)
    z, x = randn(1, 4, 3, 20, 14), randn(1, 3, 9, 160, 112)
    with torch.no_grad():
        assert max_diff(model.decode(z, tile_latent=(8, 8), tile_overlap=4), model.decode(z)) <= 1e-5
        assert max_diff(model.encode(x, tile_latent=(8, 8), tile_overlap=4).mean, model.encode(x).mean) <= 1e-5


def test_tiled_decode_is_close_and_seamless(vae):
    """Tiles of 8x8 latents over 24x24 (4 latents of overlap), random weights. A random network is
    chaotic, so tiles only approximate the whole frame near their cut edges (trained models do much
    better): mean error <= 3% of the output range, 99% of pixels within 15%. The blended seams must be no
    steeper than the rest of the frame (horizontal steps within 0.7x..1.1x of untiled, column by column)."""
    z = randn(1, 4, 2, 24, 24)
    with torch.no_grad():
        whole = vae.decode(z)
        tiled = vae.decode(z, tile_latent=(8, 8))
        streamed = torch.cat(list(vae.decode_stream([z], tile_latent=(8, 8))), 2)
    assert max_diff(tiled, streamed) <= 1e-4  # tiling and streaming compose exactly
    span = (whole.max() - whole.min()).item()
    err = (tiled - whole).abs()
    assert err.mean() <= 0.03 * span
    assert err.flatten().quantile(0.99) <= 0.15 * span

    def column_steps(x):  # mean |horizontal step| at each column boundary, (W - 1,)
        return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2, 3))

    ratio = column_steps(tiled) / column_steps(whole)
    assert ratio.max() < 1.1 and ratio.min() > 0.7


def test_tiled_encode_is_close(vae):
    x = randn(1, 3, 5, 192, 192)
    with torch.no_grad():
        whole = vae.encode(x).mean
        tiled = vae.encode(x, tile_latent=(8, 8)).mean
        streamed = vae.encode_video(x, chunked=True, tile_latent=(8, 8)).mean
    assert max_diff(tiled, streamed) <= 1e-4
    span = (whole.max() - whole.min()).item()
    assert (tiled - whole).abs().mean() <= 0.05 * span  # random weights; see the decode test


# --- precision and learning ----------------------------------------------------------------------

def test_bf16(vae):
    z = randn(1, 4, 2, 2, 2)
    with torch.no_grad():
        ref = vae.decode(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = vae.decode(z)
        half = CausalVAE(PRESETS["tiny"]).to(torch.bfloat16)
        half.load_state_dict(vae.state_dict())
        streamed = torch.cat(list(half.decode_stream([z.bfloat16()])), 2)
    assert out.dtype == torch.bfloat16 and streamed.dtype == torch.bfloat16
    span = (ref.max() - ref.min()).item()
    assert max_diff(out.float(), ref) <= 0.1 * span
    assert max_diff(streamed.float(), ref) <= 0.1 * span


def test_tiny_vae_overfits_one_clip():
    torch.manual_seed(0)
    model = CausalVAE(PRESETS["tiny"])
    x = torch.full((1, 3, 9, 16, 16), -0.6)
    for t in range(9):  # a red square moving right over a grey background
        x[0, :, t, 5:11, 2 + t // 2:8 + t // 2] = torch.tensor([0.9, -0.8, -0.5]).view(3, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        recon, _ = model(x, sample=False)
        loss = (recon - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10


def test_wrong_inputs_are_named():
    """Found by a review: a 4-D clip, a numpy array or uint8 pixels had failed deep inside the convolutions."""
    import numpy as np

    from moviola.models.vae import PRESETS

    vae = CausalVAE(PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"x must be \(B, 3, T, H, W\), got shape \(3, 5, 32, 32\)"):
        vae.encode(torch.zeros(3, 5, 32, 32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        vae.encode(np.zeros((1, 3, 5, 32, 32)))
    with pytest.raises(TypeError, match="floating point"):
        vae.encode(torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="z must be"):
        vae.decode(torch.zeros(4, 2, 4, 4))
    assert vae.encode(torch.zeros(1, 3, 5, 32, 32, dtype=torch.float64)).mean.dtype == torch.float32


def test_whole_clip_entry_points_check_and_cast_their_input_as_encode_does():
    """encode_video / decode_video (what the pipeline calls) refuse a uint8 clip, a wrong shape or an empty latent
    clip with encode's own messages, and take float64 as encode does (each had met a raw PyTorch error)."""
    vae = CausalVAE(PRESETS["tiny"]).eval()
    C = vae.config.latent_channels
    with torch.no_grad():
        with pytest.raises(TypeError, match="x must be floating point"):
            vae.encode_video(torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"x must be \(B, 3, T, H, W\)"):
            vae.encode_video(torch.zeros(3, 5, 32, 32))
        with pytest.raises(ValueError, match=rf"z must be \(B, {C}, T, H, W\)"):
            vae.decode_video(torch.zeros(1, C + 3, 2, 4, 4))
        with pytest.raises(ValueError, match="z has no latent frames"):
            vae.decode_video(torch.zeros(1, C, 0, 4, 4))
        x = torch.rand(1, 3, 5, 32, 32, dtype=torch.float64) * 2 - 1
        assert torch.allclose(vae.encode_video(x).mean, vae.encode(x.float()).mean, atol=1e-5)
        assert vae.decode_video(torch.zeros(1, C, 2, 4, 4, dtype=torch.float64)).shape == (1, 3, 5, 32, 32)
        # a clip smaller than one tile is one tile (its overlap had been refused as more than half the tile)
        x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
        assert torch.equal(vae.encode(x, tile_latent=(8, 8)).mean, vae.encode(x).mean)
