"""Flow matching: the objective (`moviola.flow.path`) and the samplers (`moviola.flow.samplers`).

Convention: x_t = (1 - t) x0 + t noise, t = 0 data, t = 1 noise, velocity v = noise - x0; samplers
integrate from t = 1 to t = 0.
"""

from moviola.flow.path import (
    add_noise,
    flow_loss,
    sample_time,
    shift_for_tokens,
    shift_time,
    timesteps,
    velocity_target,
)
from moviola.flow.samplers import SAMPLERS, cfg_model_fn, dpmpp_2m, euler, heun, make_noise, sample, unipc

__all__ = [
    "SAMPLERS", "add_noise", "cfg_model_fn", "dpmpp_2m", "euler", "flow_loss", "heun", "make_noise",
    "sample", "sample_time", "shift_for_tokens", "shift_time", "timesteps", "unipc", "velocity_target",
]
