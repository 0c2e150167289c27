"""The diffusion transformer: patch round trips, shapes over grids and aspect ratios, RoPE relativity,
adaLN-zero, text masking, determinism, files, gradients, batch independence. Tiny config, CPU, fixed seeds."""

import json

import pytest
import torch

from moviola.models.dit import PRESETS, DiT, DiTConfig, patchify, unpatchify, with_extras
from moviola.models.layers import POSITION_FREQS, apply_rope, gelu_tanh, position_features, rope_1d, rope_3d
from tensors import randn  # tests/tensors.py

TEXT_DIM = PRESETS["tiny"].text_dim


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed: int = 0, perturb: bool = True, **overrides) -> DiT:
    """A tiny DiT; `perturb` moves every weight off its (partly zero) initialisation, as training would,
    so that the output actually depends on every input."""
    torch.manual_seed(seed)
    model = DiT(DiTConfig(**(PRESETS["tiny"].to_dict() | overrides))).eval()
    if perturb:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def inputs(B: int = 2, T: int = 3, H: int = 6, W: int = 10, L: int = 5, seed: int = 1):
    x = randn(B, 16, T, H, W, seed=seed)
    t = torch.rand(B, generator=torch.Generator().manual_seed(seed))
    context = randn(B, L, TEXT_DIM, seed=seed + 1)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # sample 0 has 3 real tokens and 2 of padding
    return x, t, context, mask


# --- patches and shapes --------------------------------------------------------------------------

@pytest.mark.parametrize("patch, shape", [((1, 2, 2), (3, 6, 10)), ((2, 2, 2), (4, 6, 2)), ((1, 1, 1), (1, 3, 5))])
def test_patchify_round_trip(patch, shape):
    T, H, W = shape
    x = randn(2, 4, T, H, W)
    grid = (T // patch[0], H // patch[1], W // patch[2])
    tokens = patchify(x, patch)
    assert tokens.shape == (2, grid[0] * grid[1] * grid[2], 4 * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tokens, patch, grid), x)
    # token n is the patch at (t, h, w) with n = (t * H' + h) * W' + w: the order RoPE's table assumes
    t, h, w = grid[0] - 1, grid[1] // 2, grid[2] - 1
    n = (t * grid[1] + h) * grid[2] + w
    pt, ph, pw = patch
    cell = x[:, :, t * pt:(t + 1) * pt, h * ph:(h + 1) * ph, w * pw:(w + 1) * pw]  # (B, C, pt, ph, pw)
    assert torch.equal(tokens[:, n], cell.permute(0, 2, 3, 4, 1).reshape(2, -1))


@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 6, 10), (5, 8, 8), (2, 4, 12), (4, 12, 2)])
def test_output_shape_any_grid(shape):
    model = make_model()
    x, t, context, mask = inputs(*(2, *shape))
    with torch.no_grad():
        v = model(x, t, context, mask)
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()


def test_grid_must_divide_by_patch():
    model = make_model()
    x, t, context, mask = inputs(H=7)
    with pytest.raises(ValueError, match="multiple of the patch"):
        model(x, t, context, mask)
    with pytest.raises(ValueError, match="channels"):
        model(x[:, :8, :, :6], t, context, mask)


def test_scalar_time_broadcasts():
    model = make_model()
    x, t, context, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(0.3), context, mask),
                                   model(x, torch.full((2,), 0.3), context, mask), rtol=0, atol=0)


# --- rotary embeddings ---------------------------------------------------------------------------

@pytest.mark.parametrize("head_dim", [16, 32])
def test_rope_scores_depend_only_on_relative_position(head_dim):
    grid = (3, 4, 5)
    freqs = rope_3d(grid, head_dim).view(*grid, head_dim // 2)  # (T', H', W', d/2)
    q, k = randn(head_dim, seed=2).double(), randn(head_dim, seed=3).double()

    def score(i: tuple[int, int, int], j: tuple[int, int, int]) -> float:
        return float(apply_rope(q.float(), freqs[i]) @ apply_rope(k.float(), freqs[j]))

    for shift in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 2, 3), (2, 1, 4)]:
        for i, j in [((0, 0, 0), (0, 1, 0)), ((0, 2, 1), (0, 0, 0)), ((0, 0, 0), (0, 0, 0)), ((0, 1, 0), (0, 0, 1))]:
            i2 = tuple(a + s for a, s in zip(i, shift))
            j2 = tuple(a + s for a, s in zip(j, shift))
            if max(i2[0], j2[0]) >= grid[0] or max(i2[1], j2[1]) >= grid[1] or max(i2[2], j2[2]) >= grid[2]:
                continue
            assert score(i, j) == pytest.approx(score(i2, j2), abs=1e-4)
    # ... and on absolute position only through that offset: moving one of them changes the score
    assert score((0, 0, 0), (0, 0, 1)) != pytest.approx(score((0, 0, 0), (0, 0, 0)), abs=1e-3)
    assert score((0, 0, 0), (1, 0, 0)) != pytest.approx(score((0, 0, 0), (0, 0, 0)), abs=1e-3)


def test_rope_preserves_norms():
    freqs = rope_3d((3, 4, 5), 32)[:, None]  # (N, 1, 16)
    x = randn(2, 60, 6, 32)
    torch.testing.assert_close(apply_rope(x, freqs).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(x, rope_3d((1, 1, 1), 32)), x)  # position 0 is the identity


# --- initialisation ------------------------------------------------------------------------------

@pytest.mark.parametrize("shared_adaln", [False, True])
def test_zero_init_then_learns(shared_adaln):
    model = make_model(perturb=False, shared_adaln=shared_adaln).train()
    x, t, context, mask = inputs()
    v = model(x, t, context, mask)
    assert torch.equal(v, torch.zeros_like(v))
    h, c = randn(2, 45, 32), randn(2, 32)
    block_c = c if model.adaln is None else model.adaln(c).unflatten(1, (6, -1))
    ctx, rope = randn(2, 6, 32), model.rope((3, 3, 5), torch.device("cpu"))
    for block in model.blocks:  # each block starts as the identity
        assert torch.equal(block(h, block_c, ctx, None, rope), h)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    (v - randn(*v.shape, seed=5)).square().mean().backward()
    opt.step()
    with torch.no_grad():
        assert model(x, t, context, mask).abs().max() > 0


def test_gradients_reach_every_parameter():
    model = make_model(perturb=False).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, t, context, mask = inputs()
    target = randn(*x.shape, seed=6)
    for _ in range(4):  # adaLN-zero: the gates open after the first steps, then everything gets gradient
        opt.zero_grad()
        (model(x, t, context, mask) - target).square().mean().backward()
        opt.step()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name


# --- conditioning --------------------------------------------------------------------------------

def test_padded_context_tokens_are_ignored():
    model = make_model()
    x, t, context, mask = inputs()
    other = context.clone()
    other[0, 3:] = randn(2, TEXT_DIM, seed=9) * 10  # sample 0's padding only
    with torch.no_grad():
        v = model(x, t, context, mask)
        torch.testing.assert_close(model(x, t, other, mask), v, rtol=0, atol=1e-6)
        other[0, 1] += 1.0  # a real token: must matter
        assert (model(x, t, other, mask)[0] - v[0]).abs().max() > 1e-4


def test_all_masked_context_is_finite_and_means_no_text():
    model = make_model()
    x, t, context, _ = inputs()
    with torch.no_grad():
        v = model(x, t, context, torch.zeros(2, 5, dtype=torch.bool))
        empty = model(x, t, context[:, :0], torch.zeros(2, 0, dtype=torch.bool))
    assert torch.isfinite(v).all()
    torch.testing.assert_close(v, empty, rtol=0, atol=1e-6)  # only the null token is left to attend to


def test_time_and_text_change_the_output():
    model = make_model()
    x, t, context, mask = inputs()
    with torch.no_grad():
        v = model(x, t, context, mask)
        assert (model(x, t + 0.1, context, mask) - v).abs().max() > 1e-4
        assert (model(x, t, context.flip(0), mask.flip(0)) - v).abs().max() > 1e-4


def test_cond_channels_widen_patchify():
    model = make_model(cond_channels=17)
    x, t, context, mask = inputs()
    cond = randn(2, 17, 3, 6, 10, seed=4)
    with torch.no_grad():
        v = model(x, t, context, mask, cond=cond)
        assert v.shape == x.shape
        assert (model(x, t, context, mask, cond=cond + 1) - v).abs().max() > 1e-4
        # No cond means no known frame: the same as all-zero conditioning channels.
        assert torch.equal(model(x, t, context, mask), model(x, t, context, mask, cond=torch.zeros_like(cond)))
    with pytest.raises(ValueError, match="cond"):
        model(x, t, context, mask, cond=cond[:, :5])


def test_position_features_name_every_place_and_keep_time_by_index():
    f = position_features((3, 4, 6))  # (72, F): row-major (t, h, w) like patchify
    assert f.shape[0] == 3 * 4 * 6
    assert torch.cdist(f, f).add(torch.eye(72) * 1e9).min() > 1e-3  # no two tokens look alike
    # Time is the latent frame index from the clip's start: the same features whatever the duration.
    g = position_features((5, 4, 6))
    torch.testing.assert_close(g[:72], f)
    # Height and width are fractions of the canvas: the same place on a canvas three times as wide looks
    # alike (the width's features are the last columns), and other places do not.
    narrow, wide = position_features((1, 1, 3)), position_features((1, 1, 9))
    w = 2 * POSITION_FREQS
    torch.testing.assert_close(wide[[1, 4, 7], -w:], narrow[:, -w:])
    assert (wide[[0, 3, 6], -w:] - narrow[:, -w:]).abs().max() > 0.1


def test_with_abs_pos_starts_as_the_original_then_sees_where_it_is(tmp_path):
    base = make_model()
    x, t, context, mask = inputs()
    wide = with_extras(base, abs_pos=True)
    assert wide is not base and wide.config.abs_pos and not base.config.abs_pos and not wide.training
    assert with_extras(wide, abs_pos=True) is wide and with_extras(wide) is wide
    with torch.no_grad():
        torch.testing.assert_close(wide(x, t, context, mask), base(x, t, context, mask), rtol=0, atol=0)
        # Once trained, the embedding changes what the model computes.
        wide.pos_embed.weight.normal_(std=0.5)
        assert (wide(x, t, context, mask) - base(x, t, context, mask)).abs().max() > 1e-3
    wide.save_pretrained(tmp_path)
    back = DiT.from_pretrained(tmp_path)
    assert back.config.abs_pos
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, context, mask), wide(x, t, context, mask))


def test_text_refiner_starts_as_the_identity_and_ignores_padding(tmp_path):
    base = make_model()
    x, t, context, mask = inputs()
    wide = with_extras(base, text_refiner=2)
    assert wide.config.text_refiner == 2 and len(wide.text_refiner) == 2
    with torch.no_grad():
        torch.testing.assert_close(wide(x, t, context, mask), base(x, t, context, mask), rtol=0, atol=0)
        for block in wide.text_refiner:  # as if trained
            block.attn.proj.weight.normal_(std=0.2)
            block.mlp.fc2.weight.normal_(std=0.2)
        v = wide(x, t, context, mask)
        assert (v - base(x, t, context, mask)).abs().max() > 1e-3
        # Tokens mix: a refiner block's output for one token depends on the other real tokens ...
        block, rope = wide.text_refiner[0], rope_1d(wide.config.head_dim, torch.arange(5))[:, None, None]
        tokens = randn(1, 5, wide.config.dim, seed=7)
        moved = tokens.clone()
        moved[0, 0] = randn(wide.config.dim, seed=8)
        assert (block(moved, None, rope)[0, 2] - block(tokens, None, rope)[0, 2]).abs().max() > 1e-4
        # ... but padding never enters: sample 0's padded tokens (3 and 4) may hold anything.
        junk = context.clone()
        junk[0, 3:] = 100.0
        torch.testing.assert_close(wide(x, t, junk, mask), v)
        # An empty prompt (no real token) still gives finite output: the null token is always there.
        assert torch.isfinite(wide(x, t, context, torch.zeros_like(mask))).all()
    wide.save_pretrained(tmp_path)
    back = DiT.from_pretrained(tmp_path)
    assert back.config.text_refiner == 2
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, context, mask), v)


# --- determinism, batches, files -----------------------------------------------------------------

def test_deterministic():
    x, t, context, mask = inputs()
    with torch.no_grad():
        a = make_model(seed=3)(x, t, context, mask)
        b = make_model(seed=3)(x, t, context, mask)
        c = make_model(seed=3)(x, t, context, mask)
    assert torch.equal(a, b) and torch.equal(b, c)


def test_batch_independence():
    model = make_model()
    x, t, context, mask = inputs(B=3)
    with torch.no_grad():
        v = model(x, t, context, mask)
        for i in range(3):
            alone = model(x[i:i + 1], t[i:i + 1], context[i:i + 1], mask[i:i + 1])
            torch.testing.assert_close(alone, v[i:i + 1], rtol=1e-5, atol=1e-6)
        x2, t2, context2 = x.clone(), t.clone(), context.clone()
        x2[1:], t2[1:], context2[1:] = x2[1:] * 2, 1 - t2[1:], -context2[1:]
        torch.testing.assert_close(model(x2, t2, context2, mask)[0], v[0], rtol=1e-5, atol=1e-6)


def test_sample_prediction_turns_the_predicted_clean_latents_into_a_velocity():
    """prediction = "sample": the network's output is x0, and the model returns the velocity (x_t - x0) / t,
    with t no smaller than SAMPLE_T_MIN; the same weights as a velocity model output x0 itself."""
    from moviola.flow.path import SAMPLE_T_MIN

    vel, smp = make_model(), make_model(prediction="sample")
    x, _, context, mask = inputs()
    t = torch.tensor([0.6, 0.01])  # the second clamped
    with torch.no_grad():
        x0, v = vel(x, t, context, mask), smp(x, t, context, mask)
    tt = t.clamp_min(SAMPLE_T_MIN).reshape(2, 1, 1, 1, 1)
    torch.testing.assert_close(v, (x - x0) / tt)
    assert not torch.allclose(v, x0)
    half = torch.tensor(0.5)  # a scalar time broadcasts here too
    with torch.no_grad():
        torch.testing.assert_close(smp(x, half, context, mask), (x - vel(x, half, context, mask)) / 0.5)
    with pytest.raises(ValueError, match="prediction"):
        DiTConfig(prediction="epsilon")


def test_save_load_round_trip(tmp_path):
    model = make_model(shared_adaln=True)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "dit.safetensors"]  # no temp files left
    loaded = DiT.from_pretrained(tmp_path)
    assert loaded.config == model.config
    x, t, context, mask = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, context, mask), model(x, t, context, mask))

    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == "DiT"
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"dim_typo": 3}))
    with pytest.raises(ValueError, match="dim_typo"):
        DiT.from_pretrained(tmp_path)


def test_config_validation_and_presets():
    for name, cfg in PRESETS.items():
        assert DiTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name
    with pytest.raises(ValueError):
        DiTConfig(dim=30, heads=4)  # not divisible
    with pytest.raises(ValueError):
        DiTConfig.from_dict({"dim": "wide"})
    with torch.device("meta"):  # sizes without allocating
        assert 4.5e6 < DiT(PRESETS["small"]).num_params() < 5.5e6
        wan = DiT(PRESETS["wan-1.3b"])
    assert 1.3e9 < wan.num_params() < 1.5e9
    assert isinstance(wan.blocks, torch.nn.ModuleList) and len(wan.blocks) == 30


# --- variants ------------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, context, mask = inputs()
    grads = []
    for ckpt in (False, True):
        model = make_model(gradient_checkpointing=ckpt).train()
        model(x, t, context, mask).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_without_qk_norm():
    model = make_model(qk_norm=False, pooled_text=False)
    x, t, context, mask = inputs()
    with torch.no_grad():
        assert torch.isfinite(model(x, t, context, mask)).all()


def test_bf16_autocast_close_to_fp32():
    model = make_model()
    x, t, context, mask = inputs()
    with torch.no_grad():
        ref = model(x, t, context, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = model(x, t, context, mask)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert (v - ref).abs().max() < 0.05 * ref.abs().max()


def test_fast_gelu_matches_torch():
    x = randn(1000) * 4
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    with torch.no_grad():
        torch.testing.assert_close(gelu_tanh(x), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gelu_tanh(x.requires_grad_()), ref)  # autograd path
