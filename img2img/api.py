"""The Python API under the CLI: train(cfg), translate(...), load_generator(path).

    from img2img import api
    from img2img.config import resolve
    run = api.train(resolve("pix2pix", "facades", {"data": "facades", "out": "runs/facades", "steps": 1000}))
    api.translate("runs/facades", "photos/", "out/")
"""

from __future__ import annotations

import difflib
import random
import signal
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from img2img.config import (BaseConfig, ConfigError, check_kept, configs, flag_of, load_config, make_config,
                            option_of, save_config, with_absolute_paths)
from img2img.data.images import remove_stale_temporaries, writing
from img2img.device import default_workers, resolve_device
from img2img.gan import checkpoint
from img2img.gan.checkpoint import load_generator  # noqa: F401  (part of the API)
from img2img.progress import Reporter, Silent

__all__ = ["train", "translate", "load_generator", "resolve_device"]
DEFAULT_EPOCHS = 200  # the reference's 100 constant + 100 decaying epochs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: BaseConfig, resume: bool = False, reporter: Reporter | None = None) -> Path:
    """Train `cfg.task` into the run folder `cfg.out`; returns that folder. Under torchrun
    every process calls this; rank 0 alone writes files and reports."""
    # Imported here: translate, which shares this module, starts faster without them.
    from img2img.gan import distributed
    from img2img.gan.loop import Trainer, epochs_to_steps
    from img2img.gan.record import Recorder, held
    from img2img.tasks import TASKS

    cfg = _checked(cfg)
    world = distributed.from_environment()
    reporter = (reporter or Silent()) if world.is_main else Silent()
    if not str(cfg.out).strip():
        raise ConfigError("--out is empty: name the run folder")
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder: choose a folder for the run")
    ckpt_dir = run_dir / "checkpoints"
    if distributed.elastic_restart() and any(ckpt_dir.glob(checkpoint.STATE_PATTERN)):
        resume = True  # torchrun restarted the workers after a failure: continue the run
    state, state_path = _load_resume_state(ckpt_dir) if resume else (None, None)
    if state is not None and (run_dir / "config.yaml").is_file():  # a config built without resolve(..., resume=True)
        check_kept(load_config(run_dir / "config.yaml"), cfg.to_dict(), run_dir)  # (the API) is refused alike
    if state is None and any(ckpt_dir.glob(checkpoint.STATE_PATTERN)):
        raise ConfigError(f"{run_dir} already holds a training run; pass --resume to continue it, "
                          "or choose another --out")
    device = distributed.setup(world, resolve_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick its fastest kernels
    seed_everything(cfg.seed)
    task = TASKS[cfg.task](cfg, device, reporter)  # networks first: bad flags fail before the data scan
    check_outside_data(cfg, run_dir)  # after the scan: "no images found" is the first thing to fix
    check_best_metric(cfg.best_metric, task)
    dataset = task.dataset
    world_size = world.world_size
    effective_batch = cfg.batch_size * cfg.grad_accum * world_size
    per_step = cfg.batch_size * cfg.grad_accum
    total_steps = cfg.steps or epochs_to_steps(cfg.epochs or DEFAULT_EPOCHS, len(dataset), per_step, world_size)
    task.plan_length(total_steps)
    trainer = Trainer(task, cfg, device, total_steps, reporter, world)
    if state is not None and (problem := trainer.mismatch(state)):
        raise ConfigError(_unresumable(run_dir, cfg, problem))
    if state is not None and int(state["step"]) >= total_steps:  # the run folder is left as it is
        length = "--epochs" if cfg.epochs and not cfg.steps else "--steps"
        reporter.message(f"the run is at step {state['step']} of {total_steps} already: nothing to train; give a "
                         f"larger {length} to go on")
        distributed.teardown()
        return run_dir
    notes = [] if state is None else _resume_notes(state, state_path, run_dir, cfg, world_size, effective_batch)
    recorder = Recorder(run_dir, cfg, reporter, world.is_main, task.default_best_metric)
    if world.world_size > 1 or cfg.grad_accum > 1:
        reporter.message(f"{world_size} process{'es' if world_size > 1 else ''} x batch {cfg.batch_size} x "
                         f"{cfg.grad_accum} accumulated = effective batch {effective_batch}")
    with ExitStack() as hold:
        if world.is_main:
            with writing(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
            hold.enter_context(held(run_dir))  # before anything is written there
            remove_stale_temporaries(run_dir)
            for note in notes:  # once the run is ours: not before another process's refusal
                reporter.message(note)
            save_config(cfg, run_dir / "config.yaml", world_size=world_size, effective_batch_size=effective_batch)
            recorder.forget_after(int(state["step"]) if state is not None else 0)
        _train(cfg, task, trainer, recorder, state, world, device)
    if world.is_main:
        write_report(run_dir, reporter)
    return run_dir


def _train(cfg: BaseConfig, task, trainer, recorder, state: dict | None, world, device: torch.device) -> None:
    """The loop over the data, from the step `state` holds (None: from the start)."""
    from img2img.data.datasets import SeededSampler, SkipUnreadable
    from img2img.data.workers import opened_quietly, quiet_crash
    from img2img.gan import distributed

    dataset, per_step = task.dataset, cfg.batch_size * cfg.grad_accum
    start = 0 if state is None else int(state["step"])
    workers = default_workers(device, training=True) if cfg.workers is None else cfg.workers
    guarded = SkipUnreadable(dataset)

    def open_loader(drawn: int):
        sampler = SeededSampler(len(dataset), cfg.seed, rank=world.rank, world_size=world.world_size, start=drawn)
        return opened_quietly(lambda: iter(DataLoader(
            guarded, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None, worker_init_fn=quiet_crash)))

    batches = guarded.batches(open_loader, start * per_step, cfg.batch_size)
    if state is not None:
        trainer.load_state_dict(state)  # after iter(): the loader draws from the RNG
    try:
        with stop_on_signals(trainer):
            trainer.run(batches, recorder, task.sample_batch)
        distributed.barrier(world)  # the processes leave together: one that left early aborted at exit
    finally:
        trainer.leave_process_group()
        distributed.teardown()


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


def check_outside_data(cfg: BaseConfig, run_dir: Path) -> None:
    """A run folder inside a data folder would have its own sample grids and plots read back as
    training or validation images when the run resumes or the folder is used again."""
    from img2img.data.datasets import LAYOUT_SPLITS  # here, as train's imports: translate starts without it

    run = run_dir.resolve()
    for item in fields(cfg):
        option, value = option_of(type(cfg), item.name), getattr(cfg, item.name)
        if option is None or option.panel not in ("Data", "Validation") or not option.path or not value:
            continue
        read = [Path(value).resolve()]
        if item.name == "data":  # the reference layouts: the split subfolders, where there are any
            read = [read[0] / split for split in LAYOUT_SPLITS if (read[0] / split).is_dir()] or read
        if any(run == folder or folder in run.parents for folder in read):
            raise ConfigError(f"--out {run_dir} is inside {flag_of(item.name, option)} {value}: the run's sample "
                              "grids and plots would be read as images of the data; choose an --out outside it")


def check_best_metric(name: str | None, task) -> None:
    """--best-metric names what validation measures: a misspelt name is found before training,
    not at the first validation, hours into the run."""
    if not name:
        return
    if not task.validates:
        raise ConfigError(f"--best-metric {name}: this run has no validation images to measure; give them "
                          "(the --val-* flags) or leave --best-metric out")
    if name not in task.metrics:
        raise ConfigError(f"--best-metric {name}: {task.name} validation measures {', '.join(task.metrics)}")


def _saved_batch(run_dir: Path) -> int | None:
    """The effective batch config.yaml records of the run's last start (None: not recorded)."""
    import yaml

    try:
        facts = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return facts.get("effective_batch_size") if isinstance(facts, dict) else None


def _unresumable(run_dir: Path, cfg: BaseConfig, problem: str) -> str:
    """Why a run cannot go on with these settings, and which of them this command changed."""
    saved = with_absolute_paths(load_config(run_dir / "config.yaml"))
    if saved.get("steps") and saved["steps"] <= saved.get("pretrain_steps", 0):  # an SR run of the pixel loss alone
        return (f"--resume: {run_dir} was trained with the pixel loss alone (its --pretrain-steps cover its "
                f"--steps), so it has no discriminator to go on with: start the GAN stage as a new run from its "
                f"generator, with --init {run_dir} and another --out; the run folder is unchanged")
    changed = changed_settings(saved, cfg)
    return (f"--resume: the networks saved in {run_dir} are not the ones these settings build ({problem}). "
            f"Settings this command changes: {', '.join(changed) or 'none'}. Resume with the run's own network "
            "settings (leave those flags out); the run folder is unchanged")


def changed_settings(saved: dict, cfg: BaseConfig) -> list[str]:
    """'key old -> new' for each setting `cfg` changes from `saved` (the run's config.yaml, its
    paths absolute)."""
    return [f"{key} {saved[key]} -> {value}" for key, value in with_absolute_paths(cfg).items()
            if key in saved and saved[key] != value]


def _checked(cfg: BaseConfig) -> BaseConfig:
    """A config built directly (`Pix2PixConfig(data=...)`) checked as make_config checks one,
    its task named by its class."""
    if not isinstance(cfg, BaseConfig):
        raise ConfigError(f"train() takes a task's config, not {type(cfg).__name__}: make one with "
                          "resolve(task, overrides={...}), e.g. resolve('pix2pix', overrides={'data': 'facades'})")
    task = cfg.task or next((name for name, cls in configs().items() if type(cfg) is cls), "")
    if not task:
        raise ConfigError(f"{type(cfg).__name__} is no task's config: use one of "
                          f"{', '.join(cls.__name__ for cls in configs().values())}, or resolve()")
    return make_config(task, cfg.to_dict())


def _load_resume_state(ckpt_dir: Path) -> tuple[dict, Path]:
    found = checkpoint.load_latest_state(ckpt_dir)
    if found is None and not any(ckpt_dir.glob(checkpoint.STATE_PATTERN)):
        from img2img.gan.record import refuse_if_held

        refuse_if_held(ckpt_dir.parent)
        raise ConfigError(f"--resume: {ckpt_dir.parent} holds no checkpoint yet (the run stopped before its first, "
                          "--save-every): start it again without --resume")
    if found is None:
        raise ConfigError(f"--resume: none of the training states in {ckpt_dir} reads back whole; start a new run "
                          "with another --out")
    return found


def _resume_notes(state: dict, path: Path, run_dir: Path, cfg: BaseConfig, world_size: int,
                  effective_batch: int) -> list[str]:
    """What a resume tells the user: where it goes on from, and what differs from the saved run
    (read before config.yaml is written again)."""
    notes = [f"resuming from {path} (step {state['step']})"]
    saved = with_absolute_paths(load_config(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() else {}
    if changed := changed_settings(saved, cfg):
        notes.append(f"settings this resume changes: {', '.join(changed)}")
    if (before := _saved_batch(run_dir)) not in (None, effective_batch):
        notes.append(f"the run was trained with an effective batch of {before}; it goes on with {effective_batch} "
                     f"({world_size} process(es) x batch {cfg.batch_size} x {cfg.grad_accum} accumulated)")
    return notes


def translate(model: str | Path, source: str | Path, out_dir: str | Path, *, device: str = "auto",
              reporter: Reporter | None = None, **options):
    """Translate an image, a folder (recursively) or '-' (paths on stdin) into `out_dir`.
    `options` are the fields of infer.Options (batch_size, tile, ext, overwrite, ...).
    Returns one infer.Result per input; failures are in `.error`, not raised."""
    from img2img import infer

    known = [name for name in infer.Options.__dataclass_fields__ if name != "device"]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the options are {', '.join(known)}"
            raise infer.InputError(f"translate() has no option {name!r}: {hint}")
    return infer.translate(model, str(source), out_dir, reporter=reporter,
                           options=infer.Options(device=resolve_device(device), **options))
