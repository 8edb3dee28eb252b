"""The run folder, apart from the optimiser: log.jsonl (mirrored to TensorBoard), sample
grids, validation calls, generator files and training states, the best generators by a
validation metric, and roll-back to the newest checkpoint. Rank 0 alone writes.

    RUN/log.jsonl  RUN/samples/step_N.png  RUN/checkpoints/{generator,best_...}.safetensors
    RUN/checkpoints/state_stepN.pt  RUN/tensorboard/
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from img2img.config import ConfigError
from img2img.data.images import Image, write_bytes_atomic, write_image, writing
from img2img.gan import checkpoint
from img2img.progress import Reporter

HIGHER_IS_BETTER = ("psnr", "ssim", "val_psnr", "val_ssim")  # metric name prefixes; others: lower is better
LOCK_NAME = ".img2img-training.lock"


@contextmanager
def held(run_dir: Path):
    """Hold the run folder for this process while it trains, so that the same command started
    twice (or a --resume while the run still trains) is refused instead of two processes
    writing one run. An advisory POSIX lock on RUN/.img2img-training.lock (held by this process
    alone, not by the loader processes it forks, and on network file systems too), released by
    the system when the process ends however it ends; where the file system has none, not held."""
    import fcntl

    path = run_dir / LOCK_NAME
    with writing(path):
        handle = open(path, "a+")
    try:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another process holds it
            raise _busy(run_dir, handle) from None
        except OSError:  # no locks on this file system (some network mounts): go on without
            pass
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def refuse_if_held(run_dir: Path) -> None:
    """The refusal `held` gives, where another process trains in `run_dir` now (for a --resume
    that finds no checkpoint: the run has not stopped, it has not written one yet)."""
    import fcntl

    try:
        handle = open(run_dir / LOCK_NAME, "r+")
    except OSError:  # none: no run ever held the folder
        return
    with handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released as the handle closes
        except (BlockingIOError, PermissionError):
            raise _busy(run_dir, handle) from None
        except OSError:
            pass


def _busy(run_dir: Path, handle) -> ConfigError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    return ConfigError(f"{run_dir} is being trained by {holder} now: wait for it to end, or choose another --out")


def fmt(value: object) -> str:
    """A figure for people: 12.00 dB, not 12; 0.8312; 2e-04."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else str(value)
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    return str(value)


MAX_ROLLBACKS = 4  # to one checkpoint, each at half the learning rate before: down to 1/16


class TrainingDiverged(Exception):
    """Non-finite losses that no roll-back to the newest checkpoint cures."""


class Recorder:
    """Writes what a Trainer has done into the run folder, at the steps the config asks."""

    def __init__(self, run_dir: Path, cfg, reporter: Reporter, is_main: bool = True, best_metric: str | None = None):
        self.run_dir, self.cfg, self.reporter, self.is_main = Path(run_dir), cfg, reporter, is_main
        self.rollbacks_to: dict[int, int] = {}  # checkpoint step -> roll-backs to it
        self.best_metric = cfg.best_metric or best_metric
        self.tensorboard = TensorBoardWriter(run_dir) if cfg.tensorboard and is_main else None

    def after_step(self, trainer, sample_batch: dict | None) -> None:
        cfg, step = self.cfg, trainer.step
        last = step == trainer.total_steps
        if step % cfg.log_every == 0 or last:
            self.log(trainer)
        if sample_batch is not None and (step % (cfg.sample_every or cfg.save_every) == 0 or last):
            self.samples(trainer, sample_batch)
        if trainer.task.validates and (step % (cfg.val_every or cfg.save_every) == 0 or last):
            self.validate(trainer)
        if step % cfg.save_every == 0 or last:
            self.save(trainer)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    # ---- the log ---------------------------------------------------------------------------

    def log(self, trainer) -> None:
        record = trainer.pop_metrics()
        warning = trainer.health.discriminator_wins(trainer.step, record)
        if warning:
            record["warning"] = warning
            self.reporter.message(f"warning: {warning}")
        info = " ".join(f"{k.removeprefix('loss_')} {v:.3g}" for k, v in record.items() if k.startswith("loss"))
        self.reporter.update(trainer.step, f"{info} | {record['img_per_s'] or 0:.1f} img/s")
        self.append(record)

    def forget_after(self, step: int) -> None:
        """Leave out of log.jsonl and samples/ what was made after `step`, the checkpoint a
        resumed run goes on from (those steps are trained again, and logged again; a torn last
        line goes too); at step 0, a new run where one was killed before its first checkpoint,
        its best generators go too."""
        if not self.is_main:
            return
        if self.tensorboard is not None:  # events of those steps, from an earlier try, are dropped too
            self.tensorboard.purge_step = step + 1
        for sample in (self.run_dir / "samples").glob("step_*.png"):
            made = sample.stem[len("step_"):]
            if not made.isdigit() or int(made) > step:
                sample.unlink()
        if step == 0:
            for best in (self.run_dir / "checkpoints").glob("best_*.safetensors"):
                best.unlink()
        path = self.run_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        write_bytes_atomic(path, "".join(f"{line}\n" for line in kept).encode())

    def append(self, record: dict) -> None:
        """One line of log.jsonl, mirrored to TensorBoard when asked."""
        if not self.is_main:
            return
        with writing(self.run_dir / "log.jsonl"), open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    # ---- samples and validation ---------------------------------------------------------------

    @torch.no_grad()
    def samples(self, trainer, batch: dict) -> None:
        if not self.is_main:
            return
        batch = trainer.to_device(batch)
        with trainer.evaluating(), trainer.autocast():
            columns = [c.float().clamp(0, 1) for c in trainer.task.sample_columns(trainer.plain, batch)]
        # One row per sample: input | output | target (or the task's own columns); as many rows
        # as the shortest column has (an unpaired task's domains may hold fewer images than asked).
        rows = min(len(column) for column in columns)
        grid = torch.cat([torch.cat([c[i] for c in columns], dim=2) for i in range(rows)], dim=1)
        write_image(self.run_dir / "samples" / f"step_{trainer.step:08d}.png",
                    Image(rgb=grid.cpu(), alpha=None, gray=False, bits=8))

    @torch.no_grad()
    def validate(self, trainer) -> None:
        if not self.is_main:
            return
        with trainer.evaluating():
            metrics = trainer.task.validate(trainer.export_modules())
        if not metrics:  # nothing left to validate on; the task has said why
            return
        text = "  ".join(f"{k} {fmt(v)}" for k, v in metrics.items())
        self.reporter.message(f"step {trainer.step} validation: {text}")
        self.keep_best(trainer, metrics)
        self.append({"step": trainer.step, "val": metrics, "time": time.time()})

    def keep_best(self, trainer, metrics: dict[str, float]) -> None:
        """Copy the exported generators to best_*.safetensors when `best_metric` improves."""
        name = self.best_metric
        if not name:
            return
        if name not in metrics:
            self.reporter.message(f"best_metric {name!r} is not among the validation metrics: {', '.join(metrics)}")
            return
        value, lower_is_better = metrics[name], not name.startswith(HIGHER_IS_BETTER)
        best = trainer.best
        if best is not None and (value >= best if lower_is_better else value <= best):
            return
        trainer.best = value
        self.export(trainer, "best_")
        self.append({"step": trainer.step, "best": {name: value}, "time": time.time()})

    # ---- checkpoints --------------------------------------------------------------------------

    def save(self, trainer) -> None:
        if not self.is_main:
            return
        self.export(trainer)
        checkpoint.save_state(self.run_dir / "checkpoints", trainer.step, trainer.state_dict())

    def export(self, trainer, prefix: str = "") -> None:
        modules = trainer.export_modules()
        for stem, (net_name, spec) in trainer.task.exports().items():
            spec.step = trainer.step
            checkpoint.save_generator(self.run_dir / "checkpoints" / f"{prefix}{stem}.safetensors", modules[net_name], spec)

    def roll_back(self, trainer) -> None:
        """Back to the newest checkpoint with half the learning rate; a run that keeps failing
        from the same checkpoint, whatever the rate, is stopped rather than looped forever."""
        found = checkpoint.load_latest_state(self.run_dir / "checkpoints")
        failed_at, lr_scale = trainer.step, trainer.lr_scale
        if found is not None:
            trainer.load_state_dict(found[0])  # with the scale saved then, which may be larger
            trainer.lr_scale = min(lr_scale, trainer.lr_scale)
        target = trainer.step if found is not None else -1  # -1: no checkpoint yet, the run goes on as it is
        self.rollbacks_to[target] = self.rollbacks_to.get(target, 0) + 1
        if self.rollbacks_to[target] > MAX_ROLLBACKS:
            since = f"after step {trainer.step}" if found is not None else "before the first checkpoint"
            raise TrainingDiverged(
                f"the losses turn non-finite {since} again and again, down to x{trainer.lr_scale:g} of the "
                "learning rate: the networks have diverged (or the data hold NaN or infinite values). Start a new "
                f"run with a lower --lr; {self.run_dir} is left as it is")
        trainer.set_lr_scale(trainer.lr_scale * 0.5)
        where = f"rolled back to step {trainer.step}" if found else "no checkpoint to roll back to yet"
        self.reporter.message(f"repeated non-finite losses up to step {failed_at}: {where}; "
                              f"learning rate now x{trainer.lr_scale:g} of the configured one")


# ---- TensorBoard ------------------------------------------------------------------------------


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def tensorboard_scalars(record: dict) -> list[tuple[str, float]]:
    """The scalars of one log.jsonl record, as (tag, value), grouped the way the report groups them."""
    scalars = []
    for key, value in record.items():
        if key == "lr" and isinstance(value, dict):
            scalars += [(f"lr/{name}", float(v)) for name, v in value.items() if is_number(v)]
        elif key == "val" and isinstance(value, dict):
            scalars += [(f"val/{name}", float(v)) for name, v in value.items() if is_number(v)]
        elif key in ("step", "time") or not is_number(value):
            continue
        elif key.startswith("loss"):
            scalars.append((f"loss/{key.removeprefix('loss_')}", float(value)))
        elif key.endswith(("real", "fake")):
            scalars.append((f"D/{key}", float(value)))
        else:
            scalars.append((f"train/{key}", float(value)))
    return scalars


class TensorBoardWriter:
    """Writes log records as TensorBoard scalars into RUN/tensorboard/ (needs `tensorboard`)."""

    def __init__(self, run_dir: str | Path):
        from img2img.hints import install_hint

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(f"TensorBoard logging needs the tensorboard package: {install_hint('tensorboard')}") from err
        self.folder = Path(run_dir) / "tensorboard"
        self.make_writer, self.writer = SummaryWriter, None
        self.purge_step: int | None = None  # events of this step and later, from an earlier try, are dropped

    def write(self, record: dict) -> None:
        if self.writer is None:  # opened at the first record, once the run has said where it goes on from
            self.writer = self.make_writer(log_dir=str(self.folder), purge_step=self.purge_step)
        for tag, value in tensorboard_scalars(record):
            self.writer.add_scalar(tag, value, record.get("step"), walltime=record.get("time"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
