"""The Python API under the CLI: train(cfg), translate(...), load_generator(path).

    from img2img import api
    from img2img.config import make_config
    run = api.train(make_config("pix2pix", {"data": "facades", "out": "runs/facades", "steps": 1000}))
    api.translate("runs/facades", "photos/", "out/")
"""

from __future__ import annotations

import os
import random
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from img2img.config import ConfigError, TrainConfig, load_config, make_config
from img2img.gan import checkpoint
from img2img.gan.checkpoint import load_generator  # noqa: F401  (part of the API)
from img2img.progress import Reporter, Silent

DEFAULT_EPOCHS = 200  # the reference's 100 constant + 100 decaying epochs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume_config(run_dir: Path, overrides: dict) -> TrainConfig:
    """The run's saved config with the explicitly given values on top."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {run_dir} holds no config.yaml, so there is no run to resume there")
    cfg = load_config(saved).to_dict()
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(cfg.pop("task"), cfg)


def default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    return min(8, cpus) if device.type == "cuda" else min(2, cpus - 1)


def train(cfg: TrainConfig, resume: bool = False, reporter: Reporter | None = None) -> Path:
    """Train `cfg.task` into the run folder `cfg.out`; returns that folder. Under torchrun
    every process calls this; rank 0 alone writes files and reports."""
    # Imported here: translate, which shares this module, starts faster without them.
    from img2img.data.datasets import SeededSampler
    from img2img.gan import distributed
    from img2img.gan.loop import Trainer, epochs_to_steps
    from img2img.tasks import TASKS

    world = distributed.from_environment()
    reporter = (reporter or Silent()) if world.is_main else Silent()
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    if distributed.elastic_restart() and any(ckpt_dir.glob(checkpoint.STATE_PATTERN)):
        resume = True  # torchrun restarted the workers after a failure: continue the run
    state = _load_resume_state(ckpt_dir, reporter) if resume else None
    if state is None and any(ckpt_dir.glob(checkpoint.STATE_PATTERN)):
        raise ConfigError(f"{run_dir} already holds a training run; pass --resume to continue it, "
                          "or choose another --out")
    device = distributed.setup(world, resolve_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick its fastest kernels
    seed_everything(cfg.seed)
    task_module = TASKS[cfg.task]
    task = task_module.build(cfg, device, reporter)  # first: bad network flags fail before the data scan
    dataset, sample_batch = task_module.prepare_data(cfg)
    cfg.world_size = world.world_size
    cfg.effective_batch_size = cfg.batch_size * cfg.grad_accum * world.world_size
    steps_per_epoch_batch = cfg.batch_size * cfg.grad_accum
    total_steps = cfg.steps or epochs_to_steps(cfg.epochs or DEFAULT_EPOCHS, len(dataset), steps_per_epoch_batch,
                                               world.world_size)
    trainer = Trainer(task, cfg, run_dir, device, total_steps, reporter, world)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
    if world.distributed:
        reporter.message(f"{world.world_size} processes x batch {cfg.batch_size} x {cfg.grad_accum} "
                         f"accumulated = effective batch {cfg.effective_batch_size}")

    start = 0 if state is None else int(state["step"])
    workers = default_workers(device) if cfg.workers is None else cfg.workers
    sampler = SeededSampler(len(dataset), cfg.seed, rank=world.rank, world_size=world.world_size,
                            start=start * steps_per_epoch_batch)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None)
    batches = iter(loader)
    if state is not None:
        trainer.load_state_dict(state)  # after iter(): the loader draws from the RNG
    try:
        with stop_on_signals(trainer):
            trainer.run(batches, sample_batch)
    finally:
        distributed.teardown()
    if world.is_main:
        write_report(run_dir, reporter)
    return run_dir


def write_report(run_dir: Path, reporter: Reporter) -> None:
    """RUN/report.html with plots; a missing plotting library costs the plots, not the run."""
    from img2img.report import write_run_report

    report = write_run_report(run_dir)
    for note in report.notes:
        reporter.message(note)
    reporter.message(f"report: {report.path}")


@contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGINT/SIGTERM: finish the current step, write a checkpoint, raise TrainingStopped.
    A second SIGINT stops at once (the newest checkpoint on disk stays intact)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        if trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_signal = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_resume_state(ckpt_dir: Path, reporter: Reporter) -> dict:
    found = checkpoint.load_latest_state(ckpt_dir)
    if found is None:
        raise ConfigError(f"--resume: no readable training state in {ckpt_dir}")
    state, path = found
    reporter.message(f"resuming from {path} (step {state['step']})")
    return state


def translate(model: str | Path, source: str | Path, out_dir: str | Path, *, device: str = "auto",
              reporter: Reporter | None = None, **options):
    """Translate an image, a folder (recursively) or '-' (paths on stdin) into `out_dir`.
    `options` are the fields of infer.Options (batch_size, tile, ext, overwrite, ...).
    Returns one infer.Result per input; failures are in `.error`, not raised."""
    from img2img import infer

    return infer.translate(model, str(source), out_dir, reporter=reporter,
                           options=infer.Options(device=resolve_device(device), **options))
