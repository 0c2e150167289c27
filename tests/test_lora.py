"""LoRA adapters on a tiny DiT: identity at start, only adapters train, merge = unmerged, save/load, errors."""

import pytest
import torch

from moviola.models.dit import DiT, DiTConfig
from moviola.models.lora import (LoRAConfig, LoRAError, LoRALinear, inject_lora, load_lora, lora_modules,
                                 lora_state_dict, merge_lora, save_lora)

TINY = DiTConfig(dim=32, depth=2, heads=2, in_channels=4, freq_dim=64)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 2, 4, 4, generator=g)
    t = torch.rand(2, generator=g)
    ctx = torch.randn(2, 5, TINY.text_dim, generator=g)
    return x, t, ctx


def _model(seed=0):
    torch.manual_seed(seed)
    m = DiT(TINY)
    with torch.no_grad():  # adaLN-zero makes the fresh model output zeros; give every weight a value
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def test_fresh_adapter_is_identity_and_only_adapters_train():
    m = _model()
    x, t, ctx = _inputs()
    with torch.no_grad():  # (the MLP's GELU takes another, equally exact, path under autograd)
        before = m(x, t, ctx)
    names = inject_lora(m, LoRAConfig(rank=4, alpha=8, targets=["attn.qkv", "cross.kv", "mlp.fc2"]))
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.0.cross.kv", "blocks.1.cross.kv",
                     "blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    with torch.no_grad():
        assert torch.equal(m(x, t, ctx), before)  # B starts at zero
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * len(names)
    # one optimiser step moves the output, and the frozen base weights stay put
    base_w = m.blocks[0].attn.qkv.base.weight.clone()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m(x, t, ctx).square().mean().backward()
    opt.step()
    opt.zero_grad()
    m(x, t, ctx).square().mean().backward()  # B moved in step 1, so A has a gradient in step 2
    opt.step()
    assert not torch.allclose(m(x, t, ctx), before)
    assert torch.equal(m.blocks[0].attn.qkv.base.weight, base_w)


def _trained_adapter(m):
    inject_lora(m, LoRAConfig(rank=3, alpha=6, targets=["attn.qkv", "cross.q", "final.linear"]))
    with torch.no_grad():
        for mod in lora_modules(m).values():
            mod.lora_B.normal_(0, 0.1)
    return m


def test_merge_equals_unmerged_and_save_load_round_trip(tmp_path):
    x, t, ctx = _inputs(1)
    m = _trained_adapter(_model())
    with_lora = m(x, t, ctx)
    save_lora(m, tmp_path / "ad", LoRAConfig(rank=3, alpha=6, targets=["attn.qkv", "cross.q", "final.linear"]))
    sd = lora_state_dict(m)
    assert set(sd) == {f"{n}.{k}" for n in lora_modules(m) for k in ("lora_A", "lora_B")}
    assert (tmp_path / "ad" / "lora.safetensors").is_file() and (tmp_path / "ad" / "lora.json").is_file()

    assert merge_lora(m) == 5
    assert not lora_modules(m) and isinstance(m.blocks[0].attn.qkv, torch.nn.Linear)
    assert torch.allclose(m(x, t, ctx), with_lora, atol=1e-5)
    assert set(m.state_dict()) == set(DiT(TINY).state_dict())  # a plain DiT again: loadable anywhere

    base = _model()
    plain = base(x, t, ctx)
    load_lora(base, tmp_path / "ad")
    assert torch.allclose(base(x, t, ctx), with_lora, atol=1e-5)
    load_lora(base, tmp_path / "ad" / "lora.safetensors", scale=0.0)  # replaces; scale 0 = the base
    assert torch.allclose(base(x, t, ctx), plain, atol=1e-6)
    assert all(isinstance(mod, LoRALinear) for mod in lora_modules(base).values())


def test_clear_errors(tmp_path):
    m = _model()
    with pytest.raises(LoRAError, match="'attn.qkvz' matches no Linear"):
        inject_lora(m, LoRAConfig(rank=2, targets=["attn.qkvz"]))
    with pytest.raises(LoRAError, match="rank must be at least 1"):
        inject_lora(m, LoRAConfig(rank=0, targets=["attn.qkv"]))
    m = _trained_adapter(_model())
    save_lora(m, tmp_path / "ad", LoRAConfig(rank=3, targets=["attn.qkv"]))
    other = DiT(DiTConfig(dim=64, depth=2, heads=2, in_channels=4, freq_dim=64))
    with pytest.raises(LoRAError, match="different base model \\(dim 32, this model has 64\\)"):
        load_lora(other, tmp_path / "ad")
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter"):
        load_lora(_model(), tmp_path)
    (tmp_path / "ad" / "lora.safetensors").write_bytes(b"junk")
    with pytest.raises(LoRAError, match="unreadable LoRA adapter"):
        load_lora(_model(), tmp_path / "ad")


def test_lora_teaches_the_default_model_pink(tmp_path):
    """The demonstration, shortened for CI: a LoRA fine-tune of the shipped default on world clips whose
    objects are pink (a colour it has never seen, opt-in via moviola.world.extra) makes "a ... pink ..."
    prompts produce pink pixels where the base model makes none. 32x32 clips keep it to seconds; the
    full-size measurement is benchmarks/lora_pink.py."""
    import numpy as np

    from moviola import DEFAULT_MODEL_DIR
    from moviola.config import load_config
    from moviola.pipeline import Pipeline
    from moviola.train.dit import TrainDiTConfig, train_dit
    from moviola.world.extra import EXTRA_COLORS, color_fraction
    from moviola.world.spec import COLORS

    if not (DEFAULT_MODEL_DIR / "dit" / "dit.safetensors").is_file():
        pytest.skip("no shipped default model")
    cfg = load_config(TrainDiTConfig, None, [
        "init_from='default'", "extra_colors=['pink']", f"out='{tmp_path}'",
        "data.holdout='" + ",".join(COLORS) + "'",  # every object pink: the most signal per step
        "data.n_clips=48", "data.buckets=[[32,32,2.0,1.0]]", "data.occlusion_prob=0.0",
        "lora.rank=8", "optim.lr=1e-3", "optim.batch_size=8", "optim.steps=150", "optim.warmup_steps=5", "optim.min_lr_ratio=0.3",
        "optim.ema_decay=0.9", "caption_dropout=0.1", "eval_every=0", "log_every=10", "ckpt_every=1000"])
    adapter = train_dit(cfg)
    assert len(COLORS) == 7 and "pink" not in COLORS  # outside the fine-tune the world is as it was
    import json

    prov = json.loads((adapter / "provenance.json").read_text())  # its clips, and the shipped base's summary
    base_clips = json.loads((DEFAULT_MODEL_DIR / "provenance.json").read_text())["clips"]
    assert prov["clips"] == 48 and prov["base"]["clips"] == base_clips >= 4000
    assert f"{base_clips} clips" in (adapter / "MODEL_CARD.md").read_text()

    pipe = Pipeline.from_pretrained(DEFAULT_MODEL_DIR)
    prompts = ["a large pink circle stays still on a black background", "a large pink square moves right on a gray background"]

    def pink():
        return np.mean([color_fraction(pipe(p, width=32, height=32, seconds=2, steps=12, seed=s), EXTRA_COLORS["pink"])
                        for p in prompts for s in (0, 1)])

    before = pink()
    pipe.load_lora(adapter)
    after = pink()
    print(f"pink pixel fraction: base {100 * before:.3f} %, with the adapter {100 * after:.2f} %")
    assert before < 0.005, before
    assert after > 0.02 and after > 4 * before, (before, after)


def test_extra_colours_are_opt_in_and_leave_the_world_as_it_was():
    import numpy as np

    from moviola.world import caption, detect, spec
    from moviola.world.extra import extra_colors

    before = (dict(spec.COLORS), list(detect.NAMES), detect.PALETTE.copy(), dict(caption._LEXICON))
    with extra_colors("pink"):
        assert spec.COLORS["pink"] == (240, 110, 170) and detect.PALETTE.shape == (8, 3)
        assert caption.parse_prompt("a large pink circle falls").objects[0].color == "pink"
    assert (dict(spec.COLORS), list(detect.NAMES), dict(caption._LEXICON)) == (before[0], before[1], before[3])
    assert np.array_equal(detect.PALETTE, before[2])
    with pytest.raises(caption.PromptError, match="cannot understand 'pink'"):
        caption.parse_prompt("a large pink circle falls")
    with pytest.raises(ValueError, match="unknown extra colour 'teal'"):
        with extra_colors("teal"):
            pass


def test_an_adapter_that_does_not_fit_leaves_the_one_applied_in_place(tmp_path):
    """load_lora checks every module before touching the model: a bad adapter had removed the good one first."""
    import json

    x, t, ctx = _inputs(1)
    m = _trained_adapter(_model())
    save_lora(m, tmp_path / "good", LoRAConfig(rank=3, targets=["attn.qkv"]))
    base = _model()
    load_lora(base, tmp_path / "good")
    before = base(x, t, ctx)
    save_lora(m, tmp_path / "bad", LoRAConfig(rank=3, targets=["attn.qkv"]))
    meta = json.loads((tmp_path / "bad" / "lora.json").read_text())
    meta["modules"].append("blocks.99.attn.qkv")
    (tmp_path / "bad" / "lora.json").write_text(json.dumps(meta))
    with pytest.raises(LoRAError, match="blocks.99.attn.qkv"):
        load_lora(base, tmp_path / "bad")
    assert lora_modules(base) and torch.equal(base(x, t, ctx), before)
