"""The flow objective and samplers: the path's endpoints and target, time shifts and sampling, the loss
mask, samplers recovering known distributions from their exact velocity fields, classifier-free guidance
and seeded noise. Pure tensor maths on the CPU; fixed seeds."""

import math

import pytest
import torch

from moviola.flow import path, samplers
from moviola.flow.path import (add_noise, flow_loss, sample_time, shift_for_tokens, shift_time, temporal_loss,
                               timesteps, velocity_target)
from moviola.flow.samplers import SAMPLERS, cfg_model_fn, make_noise, sample
from tensors import randn  # tests/tensors.py


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the path ------------------------------------------------------------------------------------

def test_add_noise_endpoints_and_broadcast():
    x0, noise = randn(3, 4, 2, 5, 6, seed=1), randn(3, 4, 2, 5, 6, seed=2)
    assert torch.equal(add_noise(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(add_noise(x0, noise, torch.ones(3)), noise)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = add_noise(x0, noise, t)
    assert xt.shape == x0.shape
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(add_noise(x0, noise, 0.5), 0.5 * (x0 + noise))  # python float
    assert torch.equal(add_noise(x0[0, 0, 0], noise[0, 0, 0], torch.tensor([0.0] * 5)), x0[0, 0, 0])  # rank 2
    with pytest.raises(ValueError):
        add_noise(x0, noise, torch.ones(2))


def test_velocity_is_the_time_derivative_of_the_path():
    x0, noise = randn(2, 8, seed=3), randn(2, 8, seed=4)
    v = velocity_target(x0, noise)
    torch.testing.assert_close(v, noise - x0)
    t, dt = torch.full((2,), 0.3), 1e-3
    fd = (add_noise(x0, noise, t + dt) - add_noise(x0, noise, t)) / dt
    torch.testing.assert_close(fd, v, atol=1e-3, rtol=1e-3)


def test_shift_time_monotone_fixes_ends_identity_at_one():
    t = torch.linspace(0, 1, 101)
    assert torch.equal(shift_time(t, 1.0), t)
    for s in (0.5, 2.0, 3.0, 7.0):
        ts = shift_time(t, s)
        assert (ts[1:] > ts[:-1]).all()
        assert ts[0].item() == 0.0 and ts[-1].item() == pytest.approx(1.0)
        assert (ts[1:-1] > t[1:-1]).all() if s > 1 else (ts[1:-1] < t[1:-1]).all()
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        shift_time(t, 0.0)


def test_shift_for_tokens_monotone_with_anchors():
    counts = [1, 80, 256, 300, 1000, 2048, 4096, 10_000, 100_000]
    shifts = [shift_for_tokens(n) for n in counts]
    assert all(b >= a for a, b in zip(shifts, shifts[1:]))
    assert shift_for_tokens(80) == pytest.approx(1.0)  # the tiny CPU default stays unshifted
    assert shift_for_tokens(256) == pytest.approx(1.0)
    assert shift_for_tokens(4096) == pytest.approx(3.0)
    assert 1.0 < shift_for_tokens(1000) < shift_for_tokens(2000) < 3.0  # strictly increasing inside
    assert shift_for_tokens(10**7) == pytest.approx(3.0)  # clamped, never runs away
    assert shift_for_tokens((256 + 4096) // 2) == pytest.approx(math.sqrt(3.0))  # log-linear between anchors
    assert shift_for_tokens(100, base_shift=0.5, max_shift=5.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        shift_for_tokens(100, base_tokens=4096, max_tokens=256)


def test_sample_time_range_median_and_seed():
    g = torch.Generator().manual_seed(0)
    t = sample_time(20_000, g)
    assert t.shape == (20_000,) and t.dtype == torch.float32
    assert (t > 0).all() and (t < 1).all()
    assert t.median().item() == pytest.approx(0.5, abs=0.02)  # logit-normal(0, 1) is symmetric about 1/2
    medians = [sample_time(20_000, torch.Generator().manual_seed(0), shift=s).median().item()
               for s in (1.0, 2.0, 4.0)]
    assert medians[0] < medians[1] < medians[2]
    assert medians[2] == pytest.approx(shift_time(0.5, 4.0), abs=0.02)  # the shift maps the median
    assert sample_time(20_000, torch.Generator().manual_seed(0), mean=1.0).median() > 0.7  # sigmoid(1)
    u = sample_time(20_000, torch.Generator().manual_seed(0), kind="uniform")
    assert (u > 0).all() and (u < 1).all() and u.mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(sample_time(8, torch.Generator().manual_seed(5)),
                       sample_time(8, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="logit_normal"):
        sample_time(4, g, kind="cosine")


def test_flow_loss_weights_and_mask():
    x0, noise = randn(2, 3, 4, seed=5), randn(2, 3, 4, seed=6)
    target = velocity_target(x0, noise)
    assert flow_loss(target, x0, noise).item() == 0.0
    out = (target + 1.0).requires_grad_()
    loss = flow_loss(out, x0, noise)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert out.grad is not None
    # weights per sample: error 1 everywhere, weights (1, 3) -> mean 2
    assert flow_loss(target + 1, x0, noise, weights=torch.tensor([1.0, 3.0])).item() == pytest.approx(2.0)
    # mask out "conditioning frames" (index 0 of dim 1): a huge error there does not count
    bad = target.clone()
    bad[:, 0] += 100.0
    bad[:, 1:] += 2.0
    mask = torch.tensor([False, True, True]).reshape(1, 3, 1)
    assert flow_loss(bad, x0, noise, mask=mask).item() == pytest.approx(4.0)
    assert flow_loss(bad, x0, noise, mask=torch.zeros(1, 3, 1, dtype=torch.bool)).item() == 0.0
    # computed in float32 even for bf16 predictions
    assert flow_loss(target.bfloat16(), x0, noise).dtype == torch.float32


def test_temporal_loss_sees_only_frame_to_frame_change_of_the_error():
    x0, noise = randn(2, 3, 4, 2, 2, seed=5), randn(2, 3, 4, 2, 2, seed=6)  # (B, C, T, H, W)
    target = velocity_target(x0, noise)
    # an error that is the same in every frame costs the plain loss, not this one
    same = target + randn(2, 3, 1, 2, 2, seed=7)
    assert flow_loss(same, x0, noise).item() > 0.1
    assert temporal_loss(same, x0, noise).item() == pytest.approx(0.0, abs=1e-10)
    # an error of +1 in frame 2 only: pairs (1, 2) and (2, 3) change by 1, of 3 pairs
    bump = target.clone()
    bump[:, :, 2] += 1.0
    out = bump.requires_grad_()
    loss = temporal_loss(out, x0, noise)
    assert loss.item() == pytest.approx(2 / 3)
    loss.backward()
    assert out.grad is not None
    # a pair counts only when both of its frames are kept: frame 2 known -> no pair sees the bump
    keep = torch.tensor([True, True, False, True]).reshape(1, 1, 4, 1, 1)
    assert temporal_loss(bump.detach(), x0, noise, mask=keep).item() == pytest.approx(0.0)
    # one latent frame (an image): 0, still in the graph
    img = target[:, :, :1].clone().requires_grad_()
    zero = temporal_loss(img + 1, x0[:, :, :1], noise[:, :, :1])
    assert zero.item() == 0.0 and zero.requires_grad


def test_timesteps_grid():
    for shift in (1.0, 3.0):
        ts = timesteps(10, shift=shift)
        assert ts.shape == (11,) and ts.dtype == torch.float32
        assert ts[0].item() == 1.0 and ts[-1].item() == 0.0
        assert (ts[1:] < ts[:-1]).all()
    torch.testing.assert_close(timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert (timesteps(10, shift=3.0)[1:-1] > timesteps(10)[1:-1]).all()  # shifted towards noise
    with pytest.raises(ValueError):
        timesteps(0)


# --- samplers on known distributions -------------------------------------------------------------

MU = torch.tensor([2.0, -1.0], dtype=torch.float64)
STD = torch.tensor([0.5, 0.3], dtype=torch.float64)


def gaussian_velocity(x, t, mu=MU, s=STD):
    """Exact E[v | x_t] for data N(mu, diag(s^2)): x_t has mean (1-t) mu and variance (1-t)^2 s^2 + t^2,
    Cov(v, x_t) = t - (1-t) s^2 and E[v] = -mu, so v(x, t) = -mu + Cov / Var * (x - (1-t) mu)."""
    t = t.double()[:, None]
    var = (1 - t) ** 2 * s**2 + t**2
    return (-mu + (t - (1 - t) * s**2) / var * (x.double() - (1 - t) * mu)).to(x.dtype)


def test_gaussian_velocity_field_is_exact():
    """The ODE's exact solution maps eps to x_t = (1-t) mu + sqrt(Var_t) eps (monotone transport between
    Gaussians); the field must be its time derivative. Guards the derivation the sampler tests rest on."""
    eps = randn(64, 2, seed=7).double()

    def x_at(t):
        return (1 - t) * MU + torch.sqrt((1 - t) ** 2 * STD**2 + t**2) * eps

    for t in (0.05, 0.3, 0.7, 0.95):
        fd = (x_at(t + 1e-6) - x_at(t - 1e-6)) / 2e-6
        torch.testing.assert_close(gaussian_velocity(x_at(t), torch.full((64,), t)), fd, atol=1e-6, rtol=1e-6)


def sampler_error(name: str, steps: int, shift: float = 1.0) -> float:
    """Mean |sample - exact ODE endpoint mu + s * eps| over 2000 noises."""
    eps = make_noise((2000, 2), seed=0)
    x = sample(gaussian_velocity, eps, steps, sampler=name, shift=shift)
    return (x.double() - (MU + STD * eps.double())).abs().mean().item()


# Tolerances on sample statistics of 4000 points (sampling noise ~0.01); Euler's first-order bias is
# larger at these step counts, so it gets a looser bound.
TOL = {"euler": 0.1, "heun": 0.03, "dpm++": 0.03, "unipc": 0.03}


def test_samplers_recover_a_gaussian():
    eps = make_noise((4000, 2), seed=1)
    for name in SAMPLERS:
        x = sample(gaussian_velocity, eps, 16, sampler=name).double()
        torch.testing.assert_close(x.mean(0), MU, atol=0.02, rtol=0)
        torch.testing.assert_close(x.std(0), STD, atol=TOL[name], rtol=0)


def test_second_order_samplers_beat_euler():
    err = {name: sampler_error(name, 8) for name in SAMPLERS}
    for name in ("heun", "dpm++", "unipc"):
        assert err[name] < 0.5 * err["euler"], err
    for name in SAMPLERS:  # and every solver converges as steps grow, with and without a shift
        for shift in (1.0, 3.0):
            assert sampler_error(name, 32, shift) < 0.6 * sampler_error(name, 8, shift), (name, shift)
    assert sampler_error("heun", 32) < 2e-3 and sampler_error("unipc", 32) < 2e-3


def test_dpm_first_order_step_is_euler():
    """The exponential-integrator step on the data prediction x0 = x - t v equals an Euler step."""
    x, v = randn(4, 3, seed=8), randn(4, 3, seed=9)
    t, s = 0.7, 0.4
    torch.testing.assert_close(samplers._first_order(x, x - t * v, t, s), x + (s - t) * v)
    torch.testing.assert_close(samplers._first_order(x, x - t * v, t, 0.0), x - t * v)  # to data


MIX_W = (0.3, 0.7)
MIX_MU = (torch.tensor([-2.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64))
MIX_S = 0.4


def mixture_velocity(x, t):
    """Exact E[v | x_t] for a two-Gaussian mixture: the components' fields weighted by their
    posterior responsibilities under x_t ~ N((1-t) mu_k, ((1-t)^2 s^2 + t^2) I)."""
    xd, td = x.double(), t.double()[:, None]
    var = (1 - td) ** 2 * MIX_S**2 + td**2  # (B, 1)
    logp = torch.cat([math.log(w) - ((xd - (1 - td) * m) ** 2).sum(1, keepdim=True) / (2 * var)
                      for w, m in zip(MIX_W, MIX_MU)], dim=1)  # (B, 2): log pi_k N(x) + shared constant
    resp = logp.softmax(dim=1)
    s = torch.full((2,), MIX_S, dtype=torch.float64)
    fields = torch.stack([gaussian_velocity(xd, t, m, s) for m in MIX_MU], dim=1)  # (B, 2, 2)
    return (resp[:, :, None] * fields).sum(1).to(x.dtype)


def test_samplers_recover_a_mixture():
    eps = make_noise((4000, 2), seed=2)
    for name in SAMPLERS:
        x = sample(mixture_velocity, eps, 20, sampler=name).double()
        right = x[:, 0] > 0
        assert right.double().mean().item() == pytest.approx(MIX_W[1], abs=0.03), name
        for sel, mu in ((~right, MIX_MU[0]), (right, MIX_MU[1])):
            torch.testing.assert_close(x[sel].mean(0), mu, atol=TOL[name], rtol=0)
            torch.testing.assert_close(x[sel].std(0), torch.full((2,), MIX_S, dtype=torch.float64),
                                       atol=TOL[name], rtol=0)


def test_evaluation_counts_times_and_callback():
    steps = 6
    expected = {"euler": steps, "heun": 2 * steps - 1, "dpm++": steps, "unipc": steps}
    for name in SAMPLERS:
        seen, progress = [], []

        def fn(x, t):
            assert t.shape == (x.shape[0],) and t.dtype == torch.float32
            seen.append(t[0].item())
            return torch.zeros_like(x)

        out = sample(fn, torch.ones(3, 2), steps, sampler=name, callback=lambda i, n: progress.append((i, n)))
        assert len(seen) == expected[name], name
        assert seen[0] == 1.0 and all(0 < s <= 1 for s in seen)  # t = 0 is never evaluated
        assert progress == [(i, steps) for i in range(1, steps + 1)]
        assert torch.equal(out, torch.ones(3, 2))  # zero velocity: nothing moves


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="euler, heun, dpm\\+\\+, unipc"):
        sample(lambda x, t: x, torch.zeros(1, 2), 4, sampler="ddim")


# --- classifier-free guidance --------------------------------------------------------------------

class CountingModel:
    """model(x, t, context, context_mask, flag) with a context-dependent output; records batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, context, context_mask=None, flag=None):
        self.batches.append(x.shape[0])
        assert t.shape == (x.shape[0],) and context.shape[0] == x.shape[0]
        c = (context * context_mask[..., None]).sum(1) / context_mask.sum(1, keepdim=True)  # (B, D)
        return x * c[:, :1, None] + c[:, 1:2, None] ** 2 + t[:, None, None]


def cond_pair(batch=2):
    cond = {"context": randn(batch, 5, 3, seed=10), "context_mask": torch.ones(batch, 5, dtype=torch.bool),
            "flag": None}
    uncond = {"context": randn(batch, 5, 3, seed=11),
              "context_mask": torch.tensor([[1, 1, 0, 0, 0]] * batch).bool(), "flag": None}
    return cond, uncond


def test_cfg_guidance_one_is_the_conditional_pass_alone():
    model = CountingModel()
    cond, uncond = cond_pair()
    x, t = randn(2, 4, 6, seed=12), torch.tensor([0.3, 0.8])
    out = cfg_model_fn(model, cond, uncond, 1.0)(x, t)
    assert model.batches == [2]  # one call, no unconditional half
    assert torch.equal(out, model(x, t, **cond))


def test_cfg_combines_one_batched_call():
    model = CountingModel()
    cond, uncond = cond_pair()
    x, t = randn(2, 4, 6, seed=12), torch.tensor([0.3, 0.8])
    fn = cfg_model_fn(model, cond, uncond, 4.5)
    out = fn(x, t)
    assert model.batches == [4]  # cond and uncond in ONE call of batch 2B
    v_c, v_u = model(x, t, **cond), model(x, t, **uncond)
    torch.testing.assert_close(out, v_u + 4.5 * (v_c - v_u), atol=1e-5, rtol=1e-5)
    # guidance 0 is the unconditional model; a negative prompt is just another uncond
    torch.testing.assert_close(cfg_model_fn(model, cond, uncond, 0.0)(x, t), v_u, atol=1e-6, rtol=1e-6)
    # it samples: every step is one model call
    model.batches.clear()
    sample(fn, x, 5, sampler="dpm++")
    assert model.batches == [4] * 5


def test_cfg_interval_guides_only_inside_it():
    model = CountingModel()
    cond, uncond = cond_pair()
    x = randn(2, 4, 6, seed=12)
    fn = cfg_model_fn(model, cond, uncond, 4.5, interval=(0.4, 0.9))

    def guided(t):
        v_c, v_u = model(x, t, **cond), model(x, t, **uncond)
        return v_u + 4.5 * (v_c - v_u)

    for tv in (0.2, 0.95):  # outside: the conditional pass alone, one call of batch B
        t = torch.full((2,), tv)
        model.batches.clear()
        out = fn(x, t)
        assert model.batches == [2]
        assert torch.equal(out, model(x, t, **cond))
    t = torch.full((2,), 0.6)
    torch.testing.assert_close(fn(x, t), guided(t), atol=1e-5, rtol=1e-5)
    t = torch.tensor([0.2, 0.6])  # a batch across the edge: each sample by its own time
    out, ref = fn(x, t), guided(t)
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], model(x, t, **cond)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="interval"):
        cfg_model_fn(model, cond, uncond, 2.0, interval=(0.8, 0.2))


def test_cfg_guidance_per_frame():
    # A guidance tensor scales each frame on its own: a frame at 1 is the conditional pass, one at 4.5 is
    # the scalar-guided result, and both come from one batched call.
    model = CountingModel()
    cond, uncond = cond_pair()
    x, t = randn(2, 4, 6, seed=12), torch.tensor([0.3, 0.8])
    g = torch.tensor([4.5, 4.5, 1.0, 2.0, 4.5, 1.0]).view(1, 1, 6)
    out = cfg_model_fn(model, cond, uncond, g)(x, t)
    assert model.batches == [4]
    v_c, v_u = model(x, t, **cond), model(x, t, **uncond)
    scalar = v_u + 4.5 * (v_c - v_u)
    torch.testing.assert_close(out[..., [0, 1, 4]], scalar[..., [0, 1, 4]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., [2, 5]], v_c[..., [2, 5]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., 3], (v_u + 2.0 * (v_c - v_u))[..., 3], atol=1e-5, rtol=1e-5)


def test_cfg_broadcasts_one_prompt_and_rejects_mismatches():
    model = CountingModel()
    cond, uncond = cond_pair(batch=1)
    x, t = randn(3, 4, 6, seed=13), torch.full((3,), 0.5)
    out = cfg_model_fn(model, cond, uncond, 2.0)(x, t)  # one prompt, three seeds
    assert out.shape == x.shape and model.batches == [6]
    assert cfg_model_fn(model, cond, uncond, 1.0)(x, t).shape == x.shape
    with pytest.raises(ValueError, match="same keys"):
        cfg_model_fn(model, cond, {"context": uncond["context"]}, 2.0)
    with pytest.raises(ValueError, match="beyond the batch"):
        cfg_model_fn(model, cond, {**uncond, "context": randn(1, 7, 3)}, 2.0)
    with pytest.raises(ValueError, match="differs"):
        cfg_model_fn(model, cond, {**uncond, "flag": True}, 2.0)


# --- seeds ---------------------------------------------------------------------------------------

def test_make_noise_is_seeded():
    a, b = make_noise((2, 3, 4), seed=7), make_noise((2, 3, 4), seed=7)
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert not torch.equal(a, make_noise((2, 3, 4), seed=8))
    assert make_noise((2, 3, 4), seed=7, dtype=torch.bfloat16).dtype == torch.bfloat16
    # independent of the global RNG state
    torch.manual_seed(123)
    assert torch.equal(make_noise((2, 3, 4), seed=7), a)
    assert path.TIME_EPS > 0  # training times stay off the exact ends


def test_frame_correlated_noise_keeps_unit_variance_and_correlates_frames_by_the_given_amount():
    shape = (4, 8, 5, 16, 16)  # (B, C, T, H, W): 5 latent frames
    plain = make_noise(shape, seed=3)
    assert torch.equal(make_noise(shape, seed=3, frame_corr=0.0), plain)  # 0: the independent noise, bit for bit
    for corr in (0.25, 0.5, 0.8):
        n = make_noise(shape, seed=3, frame_corr=corr)
        assert torch.equal(n, make_noise(shape, seed=3, frame_corr=corr))  # seeded
        assert abs(n.std().item() - 1) < 0.02 and abs(n.mean().item()) < 0.02
        frames = n.transpose(0, 2).reshape(5, -1)  # (T, everything else)
        c = torch.corrcoef(frames)
        off = c[~torch.eye(5, dtype=torch.bool)]
        assert (off - corr).abs().max() < 0.03, (corr, off)
    assert path.correlate_frames(plain, torch.zeros(4, 8, 1, 16, 16), 0.5).std() < 0.8  # the shared part counts
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        path.correlate_frames(plain, plain[:, :, :1], 1.0)


def test_a_uniform_share_of_training_times_reaches_the_ends_of_the_path():
    """uniform_share draws that share of the batch from U(0, 1): the noisiest times, where every sampler starts,
    are trained (logit-normal alone puts about 0.2 % of times above 0.95)."""
    import torch

    from moviola.flow.path import sample_time

    plain = sample_time(20000, torch.Generator().manual_seed(0))
    mixed = sample_time(20000, torch.Generator().manual_seed(0), uniform_share=0.5)
    assert (plain > 0.95).float().mean() < 0.005
    assert 0.02 < (mixed > 0.95).float().mean() < 0.03  # half the batch, 5 % of it above 0.95
    assert torch.equal(mixed[:10000], plain[:10000])  # the rest as before
    with pytest.raises(ValueError, match="uniform_share"):
        sample_time(4, uniform_share=1.5)
