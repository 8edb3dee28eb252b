"""The generic GAN training loop: a task states its networks, its shared forward pass and its
phases (which networks a loss trains); the loop owns the optimisation: requires_grad toggling,
autocast and loss scaling, optimizers and LR schedules, gradient sync, EMA, NaN checks and the
state for exact resume. The run folder is gan/record.py's.
"""

from __future__ import annotations

import math
import random
import re
import signal
import time
import warnings
from abc import ABC, abstractmethod
from collections import defaultdict
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from img2img.config import BaseConfig
from img2img.data import workers
from img2img.data.datasets import DataError
from img2img.device import amp_note, autocast_dtype, compiled
from img2img.gan import checkpoint, distributed
from img2img.gan.health import Health
from img2img.progress import Reporter

Nets = Mapping[str, nn.Module]
LossFn = Callable[[Nets, dict], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Phase:
    """One optimizer step per `every` training steps on `loss(nets, batch)`, updating `nets`
    only. The loss receives the networks routed for this phase: the trained ones through their
    DDP wrappers, the others as plain modules."""

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


class Task(ABC):
    """What a model family hands the loop (and the recorder). A task file subclasses it: its
    constructor builds the networks, the data and the validation set once; its methods state
    the phases' losses. Every method that runs networks receives them as an argument."""

    name = ""
    nets: dict[str, nn.Module]
    phases: list[Phase]
    ema_nets: tuple[str, ...] = ()
    # Networks whose pass in `forward` is back-propagated by a phase (the generators): they
    # run through their DDP wrappers there.
    forward_nets: tuple[str, ...] = ()
    validates = False  # True when `validate` has held-out data to measure
    metrics: tuple[str, ...] = ()  # the names `validate` returns, known before training (--best-metric)
    default_best_metric: str | None = None  # the validation metric that picks best_*.safetensors
    sample_caption = "each row: input | output | target"  # what sample_columns' grid shows, for the report
    dataset: Any = None  # the training set, indexed by (index, seed)
    sample_batch: dict | None = None  # a fixed batch for the sample grids

    @property
    def unreadable(self) -> list[str]:
        """Messages on files left out of the fixed sample and validation batches; the loop shows them once."""
        return self.__dict__.setdefault("_unreadable", [])

    def plan_length(self, total_steps: int) -> None:
        """Told the run's length once the data is scanned (an --epochs run's steps are known
        only then), before the loop is built: a task whose networks depend on it adds them here."""

    def forward(self, nets: Nets, batch: dict) -> dict:
        """The step's shared computation (e.g. the fakes), handed to every phase's loss."""
        return batch

    @abstractmethod
    def sample_columns(self, nets: Nets, batch: dict) -> list[torch.Tensor]:
        """Columns of the sample grid (NCHW, [0, 1])."""

    @abstractmethod
    def exports(self) -> dict[str, tuple[str, checkpoint.GeneratorSpec]]:
        """file stem -> (net name, its spec): the generator files a checkpoint writes."""

    def validate(self, nets: Nets) -> dict[str, float]:
        """Validation metrics of the exported networks (the EMA where there is one)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def set_requires_grad(nets: Mapping[str, nn.Module], trained: tuple[str, ...]) -> None:
    for name, net in nets.items():
        net.requires_grad_(name in trained)


def linear_decay(first_step: int, end_step: int, decay_start: float) -> Callable[[int], float]:
    """Constant LR, then linear decay to 0 over the rest (the reference's 'linear' policy), over
    the steps a phase runs: an SR GAN stage after a long pixel stage starts at its full LR, as
    BasicSR's separate GAN run does."""
    constant = first_step + int((end_step - first_step) * decay_start)
    remaining = max(1, end_step - constant)

    def factor(step: int) -> float:  # 0 after the phase's last step (an idle optimizer, logged)
        return max(0.0, 1.0 - max(0, step - constant) / remaining)

    return factor


def warmup_ema(decay: float):
    """An EMA update whose decay grows with the number of updates t: min(decay, (1+t)/(10+t)).

    A fixed 0.999 would make a run of a few hundred steps export an average dominated by its
    first, untrained weights; with the warm-up a short run averages over its recent steps and a
    long one still over about 1 / (1 - decay). t is AveragedModel's own counter, which is saved
    in checkpoints, so a resumed run goes on with the same decays.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        t = int(updates)
        weight = 1 - min(decay, (1 + t) / (10 + t))
        for average, value in zip(averaged, current, strict=True):
            if average.is_floating_point():
                average.lerp_(value, weight)
            else:  # integer buffers (BatchNorm's batch counter) are counts, not weights
                average.copy_(value)

    return update


class Trainer:
    """Optimises a Task: one optimizer, LR schedule and loss scaler per phase, EMA, routing
    (the networks a phase trains through their DDP wrappers, the others plain), NaN skips.
    What it has done is written by a Recorder; `self.raw` always holds the plain modules."""

    def __init__(self, task: Task, cfg: BaseConfig, device: torch.device, total_steps: int,
                 reporter: Reporter, world: distributed.World | None = None):
        self.task, self.cfg, self.device = task, cfg, device
        self.total_steps, self.reporter = total_steps, reporter
        self.world = world or distributed.World()
        self.step = 0
        self.amp_dtype = autocast_dtype(device, cfg.amp)
        if note := amp_note(device, cfg.amp, self.amp_dtype):
            reporter.message(note)
        for message in task.unreadable:
            reporter.message(message)
        self.raw = dict(task.nets)
        if device.type == "cuda":
            for net in self.raw.values():
                net.to(memory_format=torch.channels_last)
        self.synced = {n: distributed.wrap(m, device, self.world, cfg.sync_bn) for n, m in self.raw.items()}
        self.plain = dict(self.raw)
        if cfg.compile:
            self.synced = {n: compiled(m) for n, m in self.synced.items()}
            self.plain = {n: compiled(m) for n, m in self.plain.items()}
        self.optimizers, self.schedulers, self.scalers = {}, {}, {}
        for phase in task.phases:
            if phase.optimizer is None:
                self._add_optimizer(phase)
        self.ema = {name: AveragedModel(self.raw[name], multi_avg_fn=warmup_ema(cfg.ema), use_buffers=True)
                    for name in task.ema_nets if cfg.ema > 0}
        self.window: dict[str, list[float]] = defaultdict(list)
        self.window_start = time.perf_counter()
        self.window_images = 0
        self.skipped_nonfinite = 0
        self.unreadable: set[str] = set()  # files lost during the run, each reported once
        self.health = Health()
        self.rollback_requested = False
        self.lr_scale = 1.0  # halved by each roll-back after repeated non-finite losses
        self.stop_signal: int | None = None  # set by a signal handler: checkpoint and stop
        self.best: float | None = None  # the best validation value so far (the recorder's best_metric)

    def _add_optimizer(self, phase: Phase) -> None:
        params = [p for name in phase.nets for p in self.raw[name].parameters()]
        cuda = self.device.type == "cuda"
        opt = torch.optim.Adam(params, lr=self.phase_lr(phase), betas=(self.cfg.beta1, self.cfg.beta2),
                               fused=True if cuda else None)
        self.optimizers[phase.name] = opt
        self.schedulers[phase.name] = torch.optim.lr_scheduler.LambdaLR(
            opt, linear_decay(phase.first_step, min(phase.last_step or self.total_steps, self.total_steps),
                              self.cfg.decay_start))  # a stage longer than the run ends with it
        self.scalers[phase.name] = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # ---- one step ---------------------------------------------------------------------

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def leave_process_group(self) -> None:
        """Drops the DDP wrappers, whose reducers hold the process group: a group that outlives
        destroy_process_group is freed at interpreter exit, where its threads abort the process."""
        self.synced = dict(self.raw)

    def routed(self, trained: tuple[str, ...]) -> dict[str, nn.Module]:
        """Trained networks through DDP, the others through their plain modules."""
        return {name: self.synced[name] if name in trained else self.plain[name] for name in self.raw}

    def train_step(self, batches: list[dict]) -> None:
        """One optimizer step per active phase over `batches` (several for accumulation)."""
        for net in self.raw.values():
            net.train()
        active = [phase for phase in self.task.phases if phase.active(self.step)]
        if len(batches) == 1:
            # The reference's order: the shared forward once, then each phase in turn.
            set_requires_grad(self.raw, self.task.forward_nets)
            with self.autocast():
                shared = self.task.forward(self.routed(self.task.forward_nets), batches[0])
            for phase in active:
                self._run_phase(phase, [shared])
        else:
            for phase in active:  # each phase recomputes the forward on every micro-batch
                self._run_phase(phase, batches)
        with warnings.catch_warnings():
            # Phases that have not started yet (GAN after pretraining) follow the global step too.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            for scheduler in self.schedulers.values():
                scheduler.step()
        for name, ema in self.ema.items():
            ema.update_parameters(self.raw[name])
        self.step += 1

    def _run_phase(self, phase: Phase, inputs: list[dict]) -> None:
        set_requires_grad(self.raw, phase.nets)
        nets = self.routed(phase.nets)
        owner = phase.optimizer or phase.name
        opt, scaler = self.optimizers[owner], self.scalers[owner]
        opt.zero_grad(set_to_none=True)
        accumulate = len(inputs) > 1
        for index, item in enumerate(inputs):
            last = index == len(inputs) - 1
            # Gradients are averaged across processes once, on the last micro-batch.
            with self._no_sync(phase.nets, skip=last or not accumulate), self.autocast():
                shared = self.task.forward(nets, item) if accumulate else item
                loss, metrics = phase.loss(nets, shared)
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

    def run(self, batches: Iterator[dict], recorder, sample_batch: dict | None = None) -> None:
        """Train up to `total_steps`; `recorder` (gan.record.Recorder) writes the run folder."""
        self.reporter.start(self.total_steps, self.step, f"training {self.task.name}")
        try:
            while self.step < self.total_steps:
                micro = [self.to_device(self.next_batch(batches, recorder)) for _ in range(self.cfg.grad_accum)]
                self.train_step(micro)
                self.window_images += sum(batch_size(b) for b in micro) * self.world.world_size
                if self.rollback_requested:
                    self.rollback_requested = False
                    recorder.roll_back(self)
                if distributed.any_true(self.world, self.stop_signal is not None):
                    recorder.save(self)
                    raise TrainingStopped(self.stop_signal or signal.SIGTERM, self.step)
                recorder.after_step(self, sample_batch)
            self.reporter.finish()
        finally:
            recorder.close()

    def next_batch(self, batches: Iterator[dict], recorder) -> dict:
        """The next batch; files that stopped being readable are reported (once each) and the run
        goes on, unless the data is gone altogether: then the run is saved first."""
        try:
            batch = next(batches)
        except DataError as err:
            recorder.save(self)
            raise DataError(f"{workers.message(err)}\nthe run was saved at step {self.step}: run the same "
                            "command with --resume to continue, once that is mended") from None
        for line in "\n".join(batch.pop("unreadable", ())).splitlines():
            if line and line not in self.unreadable:
                self.unreadable.add(line)
                self.reporter.message(f"skipped {line}; another image takes its place")
        return batch

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

    def pop_metrics(self) -> dict:
        """The means of the metrics since the last call, with LRs and throughput."""
        elapsed = time.perf_counter() - self.window_start
        means = {k: sum(v) / len(v) for k, v in self.window.items() if v}
        record = {"step": self.step, **distributed.mean_over_processes(self.world, means)}
        record["lr"] = {name: s.get_last_lr()[0] for name, s in self.schedulers.items()}
        record["img_per_s"] = self.window_images / elapsed if elapsed > 0 else None
        record["time"] = time.time()
        if self.skipped_nonfinite:
            record["skipped_nonfinite"] = self.skipped_nonfinite
        self.window.clear()
        self.window_start, self.window_images = time.perf_counter(), 0
        return record

    @contextmanager
    def evaluating(self):
        """Every network (and EMA) in eval mode, back to training mode after."""
        for net in [*self.raw.values(), *self.ema.values()]:
            net.eval()
        try:
            yield
        finally:
            for net in self.raw.values():
                net.train()

    def export_modules(self) -> dict[str, nn.Module]:
        """Each network as it is exported: its EMA where there is one."""
        return {name: self.ema[name].module if name in self.ema else net for name, net in self.raw.items()}

    # ---- state ------------------------------------------------------------------------

    def phase_lr(self, phase: Phase) -> float:
        return self.cfg.lr if phase.lr is None else phase.lr

    def set_lr_scale(self, scale: float) -> None:
        for phase in self.task.phases:
            if phase.optimizer is not None:
                continue
            scheduler = self.schedulers[phase.name]
            base = self.phase_lr(phase) * scale
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
            "task": self.task.state_dict(),
            "lr_scale": self.lr_scale,
            "best": self.best,
            "data_size": self.data_size(),
        }

    def mismatch(self, state: dict) -> str | None:
        """How the networks saved in `state` differ from these (None: they load as they are),
        checked before anything of the run folder is touched."""
        for name, net in self.raw.items():
            saved, mine = state["nets"].get(name), net.state_dict()
            if saved is None:
                return f"the run has no {name}"
            for key in sorted(set(saved) ^ set(mine)):
                return f"{name}.{key} is {'only in the run' if key in saved else 'not in the run'}"
            for key, value in mine.items():
                if tuple(saved[key].shape) != tuple(value.shape):
                    return f"{name}.{key} is {list(saved[key].shape)} in the run, {list(value.shape)} here"
        return None

    def data_size(self) -> int | None:
        dataset = getattr(self.task, "dataset", None)
        return None if dataset is None else len(dataset)

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for group, objects in (("nets", self.raw), ("optimizers", self.optimizers),
                               ("schedulers", self.schedulers), ("scalers", self.scalers)):
            for name, obj in objects.items():
                obj.load_state_dict(state[group][name])
        for name, ema in self.ema.items():
            if name in state.get("ema", {}):
                ema.load_state_dict(state["ema"][name])
            else:  # --ema given on resuming a run without it: the average starts here, warm-up and all
                self.reporter.message(f"--ema {self.cfg.ema}: the run kept no average of {name} so far; it starts "
                                      f"from the weights of step {self.step}")
        self.task.load_state_dict(state.get("task", {}))
        set_rng_state(state["rng"])
        self.best = state.get("best")
        # The optimiser settings given now (--lr, --set beta1=...), as --resume promises for its flags.
        self.set_lr_scale(float(state.get("lr_scale", 1.0)))
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["betas"] = (self.cfg.beta1, self.cfg.beta2)
        saved, now = state.get("data_size"), self.data_size()
        if None not in (saved, now) and saved != now:
            # The sampler's permutations depend on the count: say why this is no exact resume.
            self.reporter.message(f"the training data changed since step {self.step} was saved ({saved} items then, "
                                  f"{now} now): the run goes on, with other batches than an uninterrupted run")


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
