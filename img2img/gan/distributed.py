"""Multi-process training on torchrun + DistributedDataParallel.

    img2img train cyclegan ... --nproc-per-node 4                       # one node, 4 GPUs
    img2img train cyclegan ... --nproc-per-node 8 --nnodes 2 --node-rank 0 --rdzv-endpoint host0:29500
    torchrun --nproc-per-node 4 -m img2img train cyclegan ...          # the same, by hand

The first two re-launch the same command through `torch.distributed.run` (torchrun), which
starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK; `setup()` then joins
the process group (NCCL on CUDA, gloo on CPU). Every trained network gets its own DDP wrapper
(never G and D in one module); frozen loss networks stay plain modules.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun, however many processes

    @property
    def distributed(self) -> bool:
        """A process group and DDP wrappers: several processes, or torchrun's one (so that a
        one-GPU `--nproc-per-node 1` run takes the same code path as an eight-GPU one)."""
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> World:
    """The torchrun variables, or a single process when they are absent."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)), launched="TORCHELASTIC_RUN_ID" in os.environ)


def elastic_restart() -> bool:
    """True in processes that torchrun restarted after a failure (they must resume)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0


def setup(world: World, device: torch.device) -> torch.device:
    """Join the process group; on CUDA each process takes the GPU of its local rank."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def teardown() -> None:
    if dist.is_initialized():
        gc.collect()  # wrappers in reference cycles too: the group's last holders go before it does
        dist.destroy_process_group()


def wrap(net: nn.Module, device: torch.device, world: World, sync_batchnorm: bool) -> nn.Module:
    """One DDP wrapper for one trained network (identity in a single process)."""
    if not world.distributed:
        return net
    if sync_batchnorm and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    # Buffers (BatchNorm statistics) stay per process between steps, as in the references;
    # newer PyTorch names that option forward_sync_buffers.
    params = inspect.signature(DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None, **buffers)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_true(world: World, value: bool) -> bool:
    """True on every process when it is True on every process."""
    return not any_true(world, not value)


def any_true(world: World, value: bool) -> bool:
    """True on every process when it is True on any (e.g. 'a signal asked us to stop')."""
    if not world.distributed:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([1 if value else 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def mean_over_processes(world: World, values: dict[str, float]) -> dict[str, float]:
    """Each value's mean over the processes that have it: the losses each process saw on its own
    share of the batch (rank 0's alone said little of the others')."""
    if not world.distributed:
        return values
    gathered: list[dict | None] = [None] * world.world_size
    dist.all_gather_object(gathered, values)
    keys = dict.fromkeys(key for each in gathered for key in each)
    return {key: sum(each[key] for each in gathered if key in each) / sum(key in each for each in gathered)
            for key in keys}


LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--max-restarts")


def without_launch_flags(argv: list[str]) -> list[str]:
    """A command's arguments without the launcher's own flags (torchrun gets those)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            kept.append(arg)
    return kept


def relaunch(argv: list[str], nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None,
             max_restarts: int) -> int:
    """Run this same img2img command (`argv`, launch flags included) under torchrun; returns its exit code."""
    from torch.distributed.run import get_args_parser, run

    argv = without_launch_flags(argv)
    launcher = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        launcher += [f"--node-rank={node_rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        launcher += ["--standalone"]
    args = get_args_parser().parse_args([*launcher, "-m", "img2img", *argv])
    # torchrun's agent logs each signal it passes on ("Received 15 death signal, ..."), each
    # rank that failed ("failed (exitcode: -9) ..."), and the threads it sets per process: the
    # ranks and the summary below say what happened to the run, once.
    for name in ["torch.distributed.elastic", "torch.distributed.run", *logging.root.manager.loggerDict]:
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):  # each has its own level
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except Exception as err:  # ChildFailedError: torchrun has already stopped the other ranks
        if (signum := getattr(err, "sigval", None)) is not None:
            # The launcher itself was signalled (SignalException): it passed the signal on, and
            # rank 0 has said where the run stopped and how to go on.
            return 128 + int(signum)
        sys.stderr.write(f"error: distributed training failed: {_summary(err)}\n"
                         "The run folder keeps its newest checkpoint: run the same command with --resume "
                         "to continue.\n")
        return 1
    return 0


def _summary(err: Exception) -> str:
    failures = getattr(err, "failures", None)
    if not failures:
        return str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    parts = []
    for rank, failure in sorted(failures.items()):
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        parts.append(f"rank {rank} stopped with {how}")
    return "; ".join(parts)
