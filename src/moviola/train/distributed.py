"""One trainer for one process and for torchrun: process group, model wrapping, batch slicing, gathering.

    moviola train dit --config C                                        # one process
    torchrun --nproc_per_node=2 -m moviola.cli train dit --config C     # DDP: gloo on CPUs, NCCL on GPUs
    torchrun --nproc_per_node=8 -m moviola.cli train dit --config C --parallel=fsdp   # FSDP2 (for GPUs;
                                                                        # it also runs, slower, on CPUs/gloo)

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them this is one
process and nothing here talks to anyone. Every rank computes the whole global batch of a step (it is a
pure function of the seed and the step) and keeps its own contiguous slice, so the data a step sees, and
hence the loss curve, is the same whatever the world size. Losses are scaled so that DDP's gradient
average equals the gradient of the global batch mean even when slices differ in size.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards each transformer block, then the root; the EMA copy
is sharded the same way, so its update is a local lerp with no communication. Checkpoints always hold
full, unsharded tensors (gathered here), so any world size, or one process, can resume them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from moviola.train.common import pick_device


@dataclass
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    parallel: str = "none"  # "none" (one process), "ddp" or "fsdp"
    owns_group: bool = False  # setup() created the process group (so teardown() destroys it)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes logs, checkpoints, samples and the model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto", parallel: str = "ddp") -> World:
    """Join the torchrun job if there is one (init the process group) and pick this rank's device."""
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    size = env_world_size()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)  # an unknown name, or cuda without a GPU: one clear ValueError
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if size == 1:
        return World(device=dev)
    owns = not dist.is_initialized()
    if owns:
        # Long timeout: rank 0 alone builds the latent cache and runs evaluations while the others wait.
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=60),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return World(rank, size, local, dev, parallel, owns)


def teardown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def local_slice(n: int, world: World) -> slice:
    """This rank's contiguous share of a global batch of n (shares differ by at most one)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def wrap(model: nn.Module, world: World) -> nn.Module:
    """DDP or FSDP2 around the model (nothing for one process). FSDP shards every block, then the root."""
    if not world.distributed:
        return model
    if world.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [world.device.index] if world.device.type == "cuda" else None
    # Frozen parameters (LoRA's base) take no part in the gradient all-reduce.
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard_like(ema_model: nn.Module, world: World) -> nn.Module:
    """Shard the EMA copy as ``wrap`` shards the model (FSDP only), so EMA updates stay local."""
    if world.distributed and world.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in ema_model.blocks:
            fully_shard(block)
        fully_shard(ema_model)
    return ema_model


def full_tensor(t):
    """A DTensor gathered whole (a collective); any other tensor as it is."""
    if not (dist.is_available() and dist.is_initialized()):  # no process group, no DTensors (and no slow import)
        return t
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU copies of the model's tensors (a collective call under FSDP: every rank makes it)."""
    return {k: full_tensor(v).detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """The optimiser's state with sharded tensors gathered (collective under FSDP)."""
    sd = opt.state_dict()
    # New dicts: state_dict() hands out the optimiser's live per-parameter dicts, which must keep their tensors.
    sd["state"] = {i: {k: full_tensor(v).detach().cpu().clone() if torch.is_tensor(v) else v for k, v in st.items()}
                   for i, st in sd["state"].items()}
    return sd


def load_optimizer_state(opt: torch.optim.Optimizer, sd: dict) -> None:
    """Load a full optimiser state, re-sharding each tensor like its parameter under FSDP."""
    if not (dist.is_available() and dist.is_initialized()):
        opt.load_state_dict(sd)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in opt.param_groups for p in g["params"]]
    for i, st in sd["state"].items():
        p = params[int(i)]
        if isinstance(p, DTensor):
            for k, v in list(st.items()):
                if torch.is_tensor(v) and v.shape == p.shape:
                    st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
    opt.load_state_dict(sd)


def all_sum(x: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over ranks (a no-op for one process)."""
    if world.distributed:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def no_sync(model: nn.Module, skip: bool):
    """DDP: skip the gradient all-reduce on all but the last micro-batch of a step (FSDP2 reduces each
    backward; nothing to skip for one process)."""
    import contextlib

    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if skip and hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(True)
    return contextlib.nullcontext()
