"""The generic GAN training loop: a task states its networks, its shared forward pass and its
phases (which networks a loss trains); the loop owns everything else: requires_grad toggling,
autocast and loss scaling, optimizers and LR schedules, EMA, NaN checks, logs, sample grids,
checkpoints and exact resume.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
import warnings
from collections import defaultdict
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from img2img.config import TrainConfig
from img2img.data.images import Image, write_image
from img2img.gan import checkpoint, distributed
from img2img.gan.health import Health
from img2img.report import TensorBoardWriter
from img2img.progress import Reporter

LossFn = Callable[[dict], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Phase:
    """One optimizer step per `every` training steps, on `loss`, updating `nets` only."""

    name: str
    nets: tuple[str, ...]
    loss: LossFn
    every: int = 1
    first_step: int = 0  # e.g. GAN phases after a pixel-loss pretraining
    last_step: int | None = None  # exclusive
    lr: float | None = None  # None: the config's lr
    # Step the optimizer of this other phase instead of an own one (e.g. a lazy R1 phase
    # updating D with D's Adam state, as StyleGAN2's "Dreg" shares "Dmain"'s optimizer).
    optimizer: str | None = None

    def active(self, step: int) -> bool:
        before_end = self.last_step is None or step < self.last_step
        return step >= self.first_step and before_end and (step - self.first_step) % self.every == 0


@dataclass
class Task:
    """What a model family hands the loop."""

    name: str
    nets: dict[str, nn.Module]
    phases: list[Phase]
    forward: Callable[[dict], dict]  # the step's shared computation (e.g. the fakes)
    sample_columns: Callable[[dict], list[torch.Tensor]]  # grid columns (NCHW, [0, 1])
    # file stem -> (net name, its spec): the generator files a checkpoint writes
    exports: dict[str, tuple[str, Callable[[], checkpoint.GeneratorSpec]]]
    ema_nets: tuple[str, ...] = ()
    # Networks whose forward pass in `forward` is back-propagated by a phase (the generators):
    # they run through their DDP wrappers there.
    forward_nets: tuple[str, ...] = ()
    # Validation metrics (e.g. PSNR next to the bicubic baseline), given the module to export
    # for each net name (the EMA where there is one); logged as "val" records.
    validate: Callable[[Callable[[str], nn.Module]], dict[str, float]] | None = None
    default_best_metric: str | None = None  # the validation metric that picks best_*.safetensors
    extra_state: Callable[[], dict] = dict
    load_extra_state: Callable[[dict], None] = lambda state: None


def set_requires_grad(nets: dict[str, nn.Module], trained: tuple[str, ...]) -> None:
    for name, net in nets.items():
        net.requires_grad_(name in trained)


def linear_decay(total_steps: int, decay_start: float) -> Callable[[int], float]:
    """Constant LR, then linear decay to 0 over the rest (the reference's 'linear' policy)."""
    constant = int(total_steps * decay_start)
    remaining = max(1, total_steps - constant)

    def factor(step: int) -> float:
        return 1.0 - max(0, step - constant) / remaining

    return factor


def autocast_for(device: torch.device, mode: str):
    """bf16 where the GPU supports it, else fp16 (with a GradScaler); fp32 on CPU."""
    if device.type != "cuda" or mode == "off":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Trainer:
    """Runs a Task. `task.nets` is routed: while a phase runs, the networks it trains are
    called through their DDP wrappers (so their gradients are averaged across processes) and
    every other network through the plain module; `self.raw` always holds the modules."""

    def __init__(self, task: Task, cfg: TrainConfig, run_dir: Path, device: torch.device,
                 total_steps: int, reporter: Reporter, world: distributed.World | None = None):
        self.task, self.cfg, self.run_dir, self.device = task, cfg, Path(run_dir), device
        self.total_steps, self.reporter = total_steps, reporter
        self.world = world or distributed.World()
        self.step = 0
        self.amp_dtype = autocast_for(device, cfg.amp)
        self.raw = dict(task.nets)
        if device.type == "cuda":
            for net in self.raw.values():
                net.to(memory_format=torch.channels_last)
        self.synced = {n: distributed.wrap(m, device, self.world, cfg.sync_bn) for n, m in self.raw.items()}
        self.plain = dict(self.raw)
        if cfg.compile:
            self.synced = {n: torch.compile(m) for n, m in self.synced.items()}
            self.plain = {n: torch.compile(m) for n, m in self.plain.items()}
        self.optimizers, self.schedulers, self.scalers = {}, {}, {}
        for phase in task.phases:
            if phase.optimizer is None:
                self._add_optimizer(phase)
        self.ema = {name: AveragedModel(self.raw[name], multi_avg_fn=get_ema_multi_avg_fn(cfg.ema),
                                        use_buffers=True)
                    for name in task.ema_nets if cfg.ema > 0}
        self.window: dict[str, list[float]] = defaultdict(list)
        self.window_start = time.perf_counter()
        self.window_images = 0
        self.skipped_nonfinite = 0
        self.health = Health()
        self.rollback_requested = False
        self.lr_scale = 1.0  # halved by each roll-back after repeated non-finite losses
        self.stop_signal: int | None = None  # set by a signal handler: checkpoint and stop
        self.best: float | None = None  # the best validation value so far (best_metric)
        self.tensorboard = TensorBoardWriter(run_dir) if cfg.tensorboard and self.world.is_main else None

    def _add_optimizer(self, phase: Phase) -> None:
        params = [p for name in phase.nets for p in self.raw[name].parameters()]
        cuda = self.device.type == "cuda"
        opt = torch.optim.Adam(params, lr=phase.lr or self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                               fused=True if cuda else None)
        self.optimizers[phase.name] = opt
        self.schedulers[phase.name] = torch.optim.lr_scheduler.LambdaLR(
            opt, linear_decay(self.total_steps, self.cfg.decay_start))
        self.scalers[phase.name] = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # ---- one step ---------------------------------------------------------------------

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def route(self, trained: tuple[str, ...]) -> None:
        """Trained networks through DDP, the others through their plain modules."""
        for name in self.raw:
            self.task.nets[name] = self.synced[name] if name in trained else self.plain[name]

    def train_step(self, batches: list[dict]) -> None:
        """One optimizer step per active phase over `batches` (several for accumulation)."""
        for net in self.raw.values():
            net.train()
        active = [phase for phase in self.task.phases if phase.active(self.step)]
        if len(batches) == 1:
            # The reference's order: the shared forward once, then each phase in turn.
            set_requires_grad(self.raw, self.task.forward_nets)
            self.route(self.task.forward_nets)
            with self.autocast():
                shared = self.task.forward(batches[0])
            for phase in active:
                self._run_phase(phase, [shared])
        else:
            for phase in active:  # each phase recomputes the forward on every micro-batch
                self._run_phase(phase, batches)
        with warnings.catch_warnings():
            # Phases that have not started yet (GAN after pretraining) follow the global step too.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
            for scheduler in self.schedulers.values():
                scheduler.step()
        for name, ema in self.ema.items():
            ema.update_parameters(self.raw[name])
        self.step += 1

    def _run_phase(self, phase: Phase, inputs: list[dict]) -> None:
        set_requires_grad(self.raw, phase.nets)
        self.route(phase.nets)
        owner = phase.optimizer or phase.name
        opt, scaler = self.optimizers[owner], self.scalers[owner]
        opt.zero_grad(set_to_none=True)
        accumulate = len(inputs) > 1
        for index, item in enumerate(inputs):
            last = index == len(inputs) - 1
            # Gradients are averaged across processes once, on the last micro-batch.
            with self._no_sync(phase.nets, skip=last or not accumulate), self.autocast():
                shared = self.task.forward(item) if accumulate else item
                loss, metrics = phase.loss(shared)
            # Every process must skip together, or the others would wait for its gradients.
            if not distributed.all_true(self.world, bool(torch.isfinite(loss.detach()))):
                self.skipped_nonfinite += 1
                self.reporter.message(f"step {self.step}: {phase.name} loss is not finite; step skipped")
                self.rollback_requested |= self.health.nonfinite(self.step)
                opt.zero_grad(set_to_none=True)
                return
            scaler.scale(loss / len(inputs)).backward()
            for key, value in metrics.items():
                self.window[key].append(float(value))
        scaler.step(opt)
        scaler.update()

    def _no_sync(self, names: tuple[str, ...], skip: bool):
        if skip or not self.world.distributed:
            return nullcontext()
        stack = ExitStack()
        for name in names:
            module = getattr(self.synced[name], "_orig_mod", self.synced[name])
            if hasattr(module, "no_sync"):
                stack.enter_context(module.no_sync())
        return stack

    # ---- the loop ---------------------------------------------------------------------

    def run(self, batches: Iterator[dict], sample_batch: dict | None) -> None:
        cfg = self.cfg
        sample_every = cfg.sample_every or cfg.save_every
        self.reporter.start(self.total_steps, self.step, f"training {self.task.name}")
        while self.step < self.total_steps:
            micro = [self.to_device(next(batches)) for _ in range(cfg.grad_accum)]
            self.train_step(micro)
            self.window_images += sum(batch_size(b) for b in micro) * self.world.world_size
            if self.rollback_requested:
                self.roll_back()
            if distributed.any_true(self.world, self.stop_signal is not None):
                self.save()
                raise TrainingStopped(self.stop_signal or signal.SIGTERM, self.step)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                self.log()
            if sample_batch is not None and (self.step % sample_every == 0 or self.step == self.total_steps):
                self.write_samples(sample_batch)
            val_every = cfg.val_every or cfg.save_every
            if self.task.validate is not None and (self.step % val_every == 0 or self.step == self.total_steps):
                self.run_validation()
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save()
        self.reporter.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def to_device(self, batch: dict) -> dict:
        cuda = self.device.type == "cuda"
        moved = {}
        for key, value in batch.items():
            if torch.is_tensor(value):
                value = value.to(self.device, non_blocking=True)
                if cuda and value.ndim == 4:
                    value = value.contiguous(memory_format=torch.channels_last)
            moved[key] = value
        return moved

    def log(self) -> None:
        elapsed = time.perf_counter() - self.window_start
        record = {"step": self.step, **{k: sum(v) / len(v) for k, v in self.window.items() if v}}
        record["lr"] = {name: s.get_last_lr()[0] for name, s in self.schedulers.items()}
        record["img_per_s"] = self.window_images / elapsed if elapsed > 0 else None
        record["time"] = time.time()
        if self.skipped_nonfinite:
            record["skipped_nonfinite"] = self.skipped_nonfinite
        self.window.clear()
        self.window_start, self.window_images = time.perf_counter(), 0
        warning = self.health.discriminator_wins(self.step, record)
        if warning:
            record["warning"] = warning
            self.reporter.message(f"warning: {warning}")
        info = " ".join(f"{k.removeprefix('loss_')} {v:.3g}" for k, v in record.items() if k.startswith("loss"))
        self.reporter.update(self.step, f"{info} | {record['img_per_s'] or 0:.1f} img/s")
        self.append_log(record)

    def append_log(self, record: dict) -> None:
        """One line of log.jsonl (rank 0), mirrored to TensorBoard when asked."""
        if not self.world.is_main:
            return
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    @torch.no_grad()
    def run_validation(self) -> None:
        if not self.world.is_main:
            return
        self.route(())
        for net in [*self.raw.values(), *self.ema.values()]:
            net.eval()
        metrics = self.task.validate(self.export_module)
        for net in self.raw.values():
            net.train()
        text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.reporter.message(f"step {self.step} validation: {text}")
        self.keep_best(metrics)
        self.append_log({"step": self.step, "val": metrics, "time": time.time()})

    @torch.no_grad()
    def write_samples(self, batch: dict) -> None:
        if not self.world.is_main:
            return
        batch = self.to_device(batch)
        self.route(())
        for net in self.raw.values():
            net.eval()
        with self.autocast():
            columns = [c.float().clamp(0, 1) for c in self.task.sample_columns(batch)]
        for net in self.raw.values():
            net.train()
        # One row per sample: input | output | target (or the task's own columns).
        grid = torch.cat([torch.cat([c[i] for c in columns], dim=2) for i in range(len(columns[0]))], dim=1)
        write_image(self.run_dir / "samples" / f"step_{self.step:08d}.png",
                    Image(rgb=grid.cpu(), alpha=None, gray=False, bits=8))

    # ---- checkpoints ------------------------------------------------------------------

    def keep_best(self, metrics: dict[str, float]) -> None:
        """Copy the exported generators to best_*.safetensors when `best_metric` improves."""
        name = self.cfg.best_metric or self.task.default_best_metric
        if not name:
            return
        if name not in metrics:
            self.reporter.message(f"best_metric {name!r} is not among the validation metrics: {', '.join(metrics)}")
            return
        value, lower_is_better = metrics[name], not name.startswith(HIGHER_IS_BETTER)
        if self.best is not None and (value >= self.best if lower_is_better else value <= self.best):
            return
        self.best = value
        self.export("best_")
        self.append_log({"step": self.step, "best": {name: value}, "time": time.time()})

    def export_module(self, name: str) -> nn.Module:
        return self.ema[name].module if name in self.ema else self.raw[name]

    def save(self) -> None:
        if not self.world.is_main:
            return
        self.export()
        checkpoint.save_state(self.run_dir / "checkpoints", self.step, self.state_dict())

    def export(self, prefix: str = "") -> None:
        for stem, (net_name, spec_fn) in self.task.exports.items():
            spec = spec_fn()
            spec.step = self.step
            path = self.run_dir / "checkpoints" / f"{prefix}{stem}.safetensors"
            checkpoint.save_generator(path, self.export_module(net_name), spec)

    def roll_back(self) -> None:
        """Back to the newest checkpoint with half the learning rate."""
        self.rollback_requested = False
        found = checkpoint.load_latest_state(self.run_dir / "checkpoints")
        failed_at = self.step
        if found is not None:
            self.load_state_dict(found[0])
        self.set_lr_scale(self.lr_scale * 0.5)
        where = f"rolled back to step {self.step}" if found else "no checkpoint to roll back to yet"
        self.reporter.message(f"repeated non-finite losses up to step {failed_at}: {where}; "
                              f"learning rate now x{self.lr_scale:g} of the configured one")

    def set_lr_scale(self, scale: float) -> None:
        for phase in self.task.phases:
            if phase.optimizer is not None:
                continue
            scheduler = self.schedulers[phase.name]
            base = (phase.lr or self.cfg.lr) * scale
            scheduler.base_lrs = [base] * len(scheduler.base_lrs)
            factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
            for group in scheduler.optimizer.param_groups:
                group["lr"] = base * factor
        self.lr_scale = scale

    def state_dict(self) -> dict:
        return {
            "format": "img2img-train-state",
            "format_version": checkpoint.FORMAT_VERSION,
            "step": self.step,
            "nets": {k: v.state_dict() for k, v in self.raw.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "scalers": {k: v.state_dict() for k, v in self.scalers.items()},
            "ema": {k: v.state_dict() for k, v in self.ema.items()},
            "rng": rng_state(),
            "task": self.task.extra_state(),
            "lr_scale": self.lr_scale,
            "best": self.best,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for group, objects in (("nets", self.raw), ("optimizers", self.optimizers),
                               ("schedulers", self.schedulers), ("scalers", self.scalers),
                               ("ema", self.ema)):
            for name, obj in objects.items():
                obj.load_state_dict(state[group][name])
        self.task.load_extra_state(state.get("task", {}))
        set_rng_state(state["rng"])
        self.best = state.get("best")
        if state.get("lr_scale", 1.0) != 1.0:
            self.set_lr_scale(float(state["lr_scale"]))


HIGHER_IS_BETTER = ("psnr", "ssim", "val_psnr", "val_ssim")  # metric name prefixes; others: lower is better


class TrainingStopped(Exception):
    """A signal asked the run to stop; a checkpoint of `step` has been written."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


def batch_size(batch: dict) -> int:
    return next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.ndim == 4)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epochs_to_steps(epochs: int, dataset_length: int, batch: int, world_size: int = 1) -> int:
    return epochs * math.ceil(dataset_length / (batch * world_size))
