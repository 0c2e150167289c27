"""Config loading: TOML, dotted overrides, strict keys and types."""

from dataclasses import dataclass, field

import pytest

from moviola.config import ConfigError, load_config, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(64, 64)])
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    flag: bool = False


def test_defaults_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("steps = 20\n[inner]\nlr = 0.5\nsizes = [[96, 64]]\n")
    cfg = load_config(Outer, p, ["inner.lr=3e-4", "flag=true", "inner.name=abc"])
    assert cfg.steps == 20 and cfg.inner.lr == 3e-4 and cfg.flag is True
    assert cfg.inner.sizes == [(96, 64)] and cfg.inner.name == "abc"
    assert to_dict(cfg)["inner"]["sizes"] == [[96, 64]]


@pytest.mark.parametrize("override,match", [
    ("inner.bogus=1", "unknown config key 'inner.bogus'"),
    ("nope.lr=1", "unknown config key 'nope'"),
    ("steps=abc", "steps: expected an integer"),
    ("steps=1.5", "steps: expected an integer"),
    ("inner.lr=fast", "inner.lr: expected a number"),
    ("flag=1", "flag: expected true or false"),
    ("inner.sizes=[[1,2,3]]", "expected 2 items"),
    ("steps", "must look like key.path=value"),
])
def test_bad_overrides_name_the_problem(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, [override])


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[inner]\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match="inner.learning_rate"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Outer, tmp_path / "missing.toml")


@pytest.mark.parametrize("override, needle", [
    ("optim.steps=0", "optim.steps must be at least 1"),
    ("optim.batch_size=0", "optim.batch_size must be at least 1"),
    ("optim.lr=-1e-3", "optim.lr must be more than 0"),
    ("lora.rank=-4", "lora.rank and lora.alpha must be finite and at least 0"),
    ("max_minutes=-1", "max_minutes and stop_after must be at least 0"),
])
def test_training_settings_out_of_range_are_refused_by_name(override, needle):
    """Found by a review: these had trained nothing, crashed in torch, or (rank -4) quietly run a full fine-tune."""
    from moviola.train.dit import TrainDiTConfig

    with pytest.raises(ValueError, match=needle):
        load_config(TrainDiTConfig, None, [override])


def test_vae_training_needs_some_steps():
    from moviola.train.vae import TrainVAEConfig

    with pytest.raises(ValueError, match="nothing would be trained"):
        load_config(TrainVAEConfig, None, ["optim.steps=0", "decoder.steps=0"])
    assert load_config(TrainVAEConfig, None, ["optim.steps=0", "decoder.steps=5"]).decoder.steps == 5


@pytest.mark.parametrize("edit, needle", [
    ({"steps": "twenty"}, "steps: expected an integer"),
    ({"side_multiple": 0}, "need 1 <= side_multiple"),
    ({"guidance_interval": 5}, "guidance_interval: expected a list"),
    ({"sampler": "ddim"}, "sampler must be one of"),
    ({"fps": float("nan")}, "fps must be a finite number"),
])
def test_a_model_folders_pipeline_config_is_type_and_range_checked(edit, needle):
    from moviola.pipeline import PipelineConfig

    with pytest.raises(ValueError, match=needle):
        PipelineConfig.from_dict(edit)
