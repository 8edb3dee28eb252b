"""The configuration of a training run: a small common base that each model family's config
extends (in its task file), the option metadata the command line is derived from, and one
resolution path for the CLI and the Python API alike:

    task defaults < recipe < flags < --set      (or, with resume, the run's saved config < ...)

Every field is one `--set key=value` setting; a field declared with `opt(...)` is also a flag,
with its help, its panel, its range or choices, all declared here once and checked here, so
`api.train` refuses what the CLI refuses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

AMP_CHOICES = ("auto", "bf16", "fp16", "off")  # training and translate alike (device.autocast_dtype)
AMP_HELP = ("auto: bf16 autocast on CUDA (fp16 where bf16 is missing), fp32 on a CPU; bf16 or fp16: that one "
            "(a CPU takes bf16 alone); off: fp32.")


class UsageError(Exception):
    """A mistake in what was asked. `message` names command-line flags, as the CLI prints it;
    str() adds the Python names of those flags for the API (--gan-loss is gan_loss)."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        names = [f"{flag} is {name}" for flag, name in _python_names(self.message)]
        return f"{self.message} (in Python: {', '.join(names)})" if names else self.message


class ConfigError(UsageError):
    """A setting that cannot work; the message says what to pass instead."""


# The arguments of resolve() and api.train() that the CLI spells as flags of other names.
_CALL_ARGUMENTS = {"--recipe": "recipe", "--resume": "resume", "--set": "sets"}


def _python_names(message: str) -> list[tuple[str, str]]:
    """The flags `message` names that have a Python name other than their own, e.g.
    ("--gan-loss", "gan_loss"): settings, translate's options and resolve()'s arguments."""
    from img2img.infer import Options  # imported here: infer imports this module

    names = {**{f"--{name.replace('_', '-')}": name for name in Options.__dataclass_fields__}, **_CALL_ARGUMENTS}
    for cls in configs().values():
        for name in field_names(cls):
            option = option_of(cls, name)
            for flag in (flag_of(name, option), *(option.aliases if option else ())):
                names.setdefault(flag, name)
    said = dict.fromkeys(re.findall(r"(?<![\w-])--[a-z][a-zA-Z0-9]*(?:-[a-zA-Z0-9]+)*", message))
    return [(flag, names[flag]) for flag in said if flag in names and names[flag] != flag[2:]]


def require_folder(folder: str | Path, flag: str = "") -> None:
    """A ConfigError unless `folder` is a folder: a wrong path is a usage error (exit 2), unlike
    bad files inside a right one."""
    if not Path(folder).is_dir():
        what = "not a folder" if Path(folder).exists() else "no such folder"
        raise ConfigError(f"{flag} {folder}: {what}".strip())


@dataclass(frozen=True)
class Option:
    """How a config field appears on the command line and what values it accepts."""

    help: str
    panel: str = "Training"
    flag: str | None = None  # default: --field-name (underscores as dashes)
    aliases: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    default_text: str | None = None  # shown as "(default: ...)" instead of the field's default
    path: bool = False  # a file or folder (PATH on the command line)
    cli: bool = True  # False: a --set setting only
    flag_alias: str | None = None  # another option's flag this field takes when its value is no number
    kept: bool = False  # what the run learns (direction, objective): --resume cannot change it


def opt(default: Any, help: str, **option: Any) -> Any:
    """A config field that is also a command-line option."""
    return field(default=default, metadata={"option": Option(help, **option)})


RUN_FACTS = ("world_size", "effective_batch_size")  # written to config.yaml by train(), never read back


@dataclass
class BaseConfig:
    """What every model family shares: length, optimiser, schedule, run folder, hardware."""

    task: str = ""
    out: str | None = opt(None, "Run folder.", panel="Run folder", path=True, default_text="runs/TASK")
    steps: int | None = opt(None, "Training steps (batches).", min=1)
    epochs: int | None = opt(None, "Epochs over the data, instead of --steps.", min=1, default_text="200")
    size: int = opt(256, "Training crop in pixels.", panel="Data", min=16)
    batch_size: int = opt(1, "Images per step and process.", min=1)
    flip: bool = opt(True, "Random horizontal flips (SR: the 8 symmetries).", panel="Data", cli=False)
    workers: int | None = opt(None, "Data loader processes.", panel="Hardware", min=0, default_text="from the CPU count")
    ngf: int = opt(64, "Generator width.", panel="Networks", min=1)
    ndf: int = opt(64, "Discriminator width.", panel="Networks", min=1)
    lr: float = opt(2e-4, "Adam learning rate.", aliases=("--learning-rate",), min=0)
    beta1: float = opt(0.5, "Adam beta1.", cli=False, min=0, max=1)
    beta2: float = opt(0.999, "Adam beta2.", cli=False, min=0, max=1)
    decay_start: float = opt(0.5, "Fraction of the run after which the LR decays linearly to 0.", cli=False, min=0, max=1)
    r1: float = opt(0.0, "Zero-centred R1 penalty on D's gradient at real images, weight gamma "
                    "(0: off; R3GAN: 0.1 with --gan-loss rpgan).", panel="Losses", min=0)
    r2: float = opt(0.0, "Zero-centred R2 penalty on D's gradient at fakes, weight gamma (0: off).", panel="Losses", min=0)
    reg_every: int = opt(16, "Lazy regularisation: R1/R2 every N steps, scaled by N.", panel="Losses", min=1)
    ema: float = opt(0.0, "EMA decay of the generators' weights, exported instead of them; 0: off.", min=0, max=0.99999)
    seed: int = opt(0, "Random seed.", min=0, max=2**32 - 1, kept=True)
    save_every: int = opt(1000, "Checkpoint every N steps.", panel="Run folder", min=1)
    sample_every: int | None = opt(None, "Sample grid every N steps.", panel="Run folder", cli=False, min=1,
                                   default_text="--save-every")
    log_every: int = opt(10, "Write log.jsonl and update the progress line every N steps.", panel="Run folder", min=1)
    tensorboard: bool = opt(False, "Also log to RUN/tensorboard/ (needs the tensorboard extra).", panel="Run folder")
    val_every: int | None = opt(None, "Validate every N steps.", panel="Validation", min=1, default_text="--save-every")
    best_metric: str | None = opt(None, "Validation metric that picks checkpoints/best_*.safetensors.", panel="Validation")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N.", panel="Hardware")
    amp: str = opt("auto", AMP_HELP + " fp16 trains with loss scaling.", panel="Hardware", choices=AMP_CHOICES)
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.", panel="Hardware", min=1)
    compile: bool = opt(False, "torch.compile the generators and discriminators.", panel="Hardware")
    sync_bn: bool = opt(False, "SyncBatchNorm across processes (CUDA, BatchNorm networks).", panel="Hardware")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Cross-field checks of the family; values are already typed and in range."""


# ---- each family's config (declared in its task file) ---------------------------------------


def configs() -> dict[str, type[BaseConfig]]:
    from img2img.tasks import TASKS  # the task files import this module: import them late

    return {name: task.Config for name, task in TASKS.items()}


def config_class(task: str) -> type[BaseConfig]:
    known = configs()
    if task not in known:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(known)}")
    return known[task]


def option_of(cls: type, name: str) -> Option | None:
    """A field's Option, from the first class that declares one (a family may re-declare a
    field just to change its default)."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and "option" in declared.metadata:
            return declared.metadata["option"]
    return None


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def field_names(cls: type = BaseConfig) -> list[str]:
    return [f.name for f in fields(cls)]


# ---- building and checking ----------------------------------------------------------------


def make_config(task: str, values: Mapping[str, Any], recipe: Mapping[str, Any] | None = None) -> BaseConfig:
    """The config of `task`: its defaults, then a recipe, then `values` (None: not given)."""
    cls = config_class(task)
    merged: dict[str, Any] = {}
    for source in (recipe or {}, values):
        for key, value in source.items():
            if value is not None and key not in ("task", *RUN_FACTS):
                merged[key] = check_value(key, value, cls)
    given = [key for key in ("steps", "epochs") if values.get(key) is not None]
    if len(given) == 2:
        raise ConfigError("--steps and --epochs both given: a run's length is one or the other")
    if given:  # replaces the other one of a recipe or of the resumed run's config
        merged.pop("epochs" if given[0] == "steps" else "steps", None)
    cfg = cls(task=task, **merged)
    if cfg.out is None:
        cfg.out = f"runs/{task}"
    cfg.check()
    return cfg


def check_value(key: str, value: Any, cls: type = BaseConfig) -> Any:
    """`value` as the type of setting `key` of `cls`, in range, or a ConfigError saying what was expected."""
    types = field_types(cls)
    if key == "task":
        raise ConfigError("the task is not a setting but the command's: `img2img train pix2pix|cyclegan|cut|srgan`")
    if key not in types:
        raise ConfigError(f"unknown setting {key!r}{_did_you_mean(key, cls)}")
    value = _typed(key, value, types[key])
    option = option_of(cls, key)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag_of(key, option) if option else key} {value}: must be a finite number")
    if option is None or value is None:
        return value
    flag = flag_of(key, option)
    if option.choices and value not in option.choices:
        raise ConfigError(f"{flag} {value!r} is not offered for {task_of(cls)}; choose {', '.join(option.choices)}")
    if option.min is not None and value < option.min:
        raise ConfigError(f"{flag} {value}: must be at least {_number(option.min)}")
    if option.max is not None and value > option.max:
        raise ConfigError(f"{flag} {value}: must be at most {_number(option.max)}")
    return value


def _number(limit: int | float) -> str:
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def _typed(key: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    optional = type(None) in args
    expected = next((a for a in args if a is not type(None)), hint) if args else hint
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and expected in (int, float, bool) and value.strip():
        try:  # '8', 'false', 'null' (a quoted YAML value, a pipeline's text): read as --set reads them
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if value is None and optional:
        return None
    if expected is float and isinstance(value, str):  # YAML reads 2e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool):
        if expected is bool:
            return value
    elif expected is int and isinstance(value, int):
        return value
    elif expected is float and isinstance(value, (int, float)):
        return float(value)
    elif expected is str and isinstance(value, (str, int, float)):
        return str(value)
    name = expected.__name__
    given = "an empty value" if value is None or (isinstance(value, str) and not value.strip()) else repr(value)
    raise ConfigError(f"setting {key!r} takes {'an' if name == 'int' else 'a'} {name}"
                      f"{' or null' if optional else ''}, not {given}")


def task_of(cls: type) -> str:
    return next((name for name, known in configs().items() if known is cls), "this task")


def flag_of(name: str, option: Option | None) -> str:
    return (option.flag if option and option.flag else None) or "--" + name.replace("_", "-")


def parse_overrides(items: list[str], cls: type | None = None) -> dict[str, Any]:
    """`--set key=value` items (YAML values: 2e-4, true, null, unet_128) to a dict, checked
    against `cls` (None: the family that has the setting)."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write it as key=value, e.g. --set lr=1e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        overrides[key.strip()] = check_value(key.strip(), value, cls or family_with(key.strip()))
    return overrides


def family_with(key: str) -> type[BaseConfig]:
    return next((cls for cls in configs().values() if key in field_names(cls)), BaseConfig)


# The options of the reference pix2pix/CycleGAN and CUT code that are spelt otherwise here, or
# not offered: (the setting that does it here, the value it takes for it, a note), or ("", "",
# what to do instead). The README's table lists them; the flag is named as the task spells it.
REFERENCE_OPTIONS = {
    "dataroot": ("data", "", " DIR (A and B side by side, or trainA/ and trainB/), or --a DIR --b DIR"),
    "crop_size": ("size", "", ""),
    "gan_mode": ("gan_loss", "", ""),
    "n_layers_D": ("n_layers_d", "", ""),
    "no_dropout": ("dropout", "false", ""),
    "no_flip": ("flip", "false", ""),
    "lambda_L1": ("lambda_l1", "", ""),
    "lambda_A": ("lambda_cycle", "", " (one weight for both cycles)"),
    "lambda_B": ("lambda_cycle", "", " (one weight for both cycles)"),
    "lambda_GAN": ("lambda_gan", "", ""),
    "lambda_NCE": ("lambda_nce", "", ""),
    "nce_T": ("nce_t", "", ""),
    "netF_nc": ("netf_nc", "", ""),
    "CUT_mode": ("mode", "", " (cut or fastcut)"),
    "n_epochs": ("epochs", "", " (the whole run; the linear decay starts at decay_start, 0.5 of it by default)"),
    "n_epochs_decay": ("decay_start", "", " (the fraction of the run before the linear decay; 0.5 by default)"),
    "lr_policy": ("decay_start", "", " (the linear policy alone; step, plateau and cosine are not offered)"),
    "preprocess": ("load_size", "", " then --size crops: resize_and_crop alone; crop, scale_width and none are not "
                   "offered"),
    "init_type": ("", "", "the reference's own init per network (normal 0.02; CUT: xavier 0.02); no choice"),
    "init_gain": ("", "", "the reference's own init per network (normal 0.02; CUT: xavier 0.02); no choice"),
    "serial_batches": ("serial", "true", ""),
    "num_threads": ("workers", "", ""),
    "gpu_ids": ("", "", "--device, and --nproc-per-node for several GPUs"),
    "continue_train": ("", "", "--resume"),
    "epoch_count": ("", "", "--resume (the step is in the checkpoint)"),
    "print_freq": ("log_every", "", " (steps)"),
    "save_epoch_freq": ("save_every", "", " (steps)"),
    "save_latest_freq": ("save_every", "", " (steps)"),
    "display_freq": ("sample_every", "", " (steps)"),
    "input_nc": ("", "", "nothing: images are read as RGB (gray ones repeated), results keep gray as gray"),
    "output_nc": ("", "", "nothing: images are read as RGB (gray ones repeated), results keep gray as gray"),
    "max_dataset_size": ("", "", "nothing: every image of the folder is used"),
}


def reference_answer(key: str, cls: type) -> str:
    """What to use for the reference code's option `key` in the task of `cls`, spelt as its
    command line takes it."""
    setting, value, note = REFERENCE_OPTIONS[key]
    if not setting:
        return note
    if setting not in field_names(cls):
        return f"nothing in {task_of(cls)}, which has no {setting}"
    option = option_of(cls, setting)
    flag = flag_of(setting, option)
    if option is not None and not option.cli:
        return f"--set {setting}={value or '...'}{note}"
    return f"--no-{flag[2:]}{note}" if value == "false" else f"{flag}{note}"


def reference_row(key: str) -> str:
    """The README table's answer for `key`, whatever the task."""
    setting, value, note = REFERENCE_OPTIONS[key]
    return f"the setting `{setting}`{f' = {value}' if value else ''}{note}" if setting else note


def _did_you_mean(key: str, cls: type) -> str:
    if key in REFERENCE_OPTIONS:
        return f"; for the reference code's {key}: {reference_answer(key, cls)}"
    known = field_names(cls) if cls is not BaseConfig else [n for c in configs().values() for n in field_names(c)]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---- resolution: one path for the CLI and the API -------------------------------------------


def resolve(task: str, recipe: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
            resume: bool = False, sets: list[str] | None = None) -> BaseConfig:
    """The config of a run. `recipe`: a bundled recipe name or a YAML file; `overrides`: settings
    given by name (None: not given); `sets`: `key=value` texts applied last; `resume`: start from
    the saved config of the run in `overrides["out"]` instead of the task's defaults and recipe."""
    cls = config_class(task)
    values = {**(overrides or {}), **parse_overrides(sets or [], cls)}
    if resume:
        recipe_values = _recipe_values(recipe, task) if recipe else {}
        run_dir = Path(values.get("out") or recipe_values.get("out") or f"runs/{task}")
        saved = load_config(run_dir / "config.yaml", missing=f"--resume: {run_dir} holds no config.yaml, "
                                                            "so there is no run to resume there")
        if saved.task != task:
            raise ConfigError(f"--resume: {run_dir} holds a {saved.task} run: use `img2img train {saved.task}`")
        check_kept(saved, values, run_dir)
        if recipe:
            _check_recipe_agrees(recipe, recipe_values, saved, values, run_dir)
        return make_config(task, values, saved.to_dict())
    return make_config(task, values, _recipe_values(recipe, task) if recipe else {})


def _recipe_values(recipe: str | Path, task: str) -> dict[str, Any]:
    from img2img import recipes

    recipe_task, recipe_values = recipes.load(str(recipe), task)
    if recipe_task != task:
        raise ConfigError(f"--recipe {recipe} is a {recipe_task} recipe: use `img2img train {recipe_task}`")
    return recipe_values


def _check_recipe_agrees(recipe: str | Path, recipe_values: Mapping[str, Any], saved: BaseConfig,
                         values: Mapping[str, Any], run_dir: Path) -> None:
    """A resumed run goes on with its config.yaml, not the recipe's settings: the same command
    again plus --resume passes; a recipe that would change the run is refused, not ignored."""
    cls = type(saved)
    length_given = any(values.get(key) is not None for key in ("steps", "epochs"))
    for key, value in recipe_values.items():
        option = option_of(cls, key)
        if option is not None and option.path and value:
            value = os.path.abspath(value)
        overridden = values.get(key) is not None or (length_given and key in ("steps", "epochs"))
        if not overridden and value != getattr(saved, key):
            flag = flag_of(key, option)
            raise ConfigError(f"--resume: --recipe {recipe} sets {_as_typed(flag, value)}, and the run in {run_dir} "
                              f"has {_as_typed(flag, getattr(saved, key))}; a resumed run goes on with its own "
                              "config.yaml and the flags given: leave --recipe out")


def check_kept(saved: BaseConfig, values: Mapping[str, Any], run_dir: Path) -> None:
    """A ConfigError where `values` change a setting that a resumed run keeps."""
    cls = type(saved)
    for key, value in values.items():
        option = option_of(cls, key)
        if value is None or option is None or not option.kept:
            continue
        before, value, flag = getattr(saved, key), check_value(key, value, cls), flag_of(key, option)
        if value != before:
            raise ConfigError(f"--resume: the run in {run_dir} was trained with {_as_typed(flag, before)}, and a "
                              f"resumed run keeps it: leave {_as_typed(flag, value).split()[0]} out, or start a new "
                              "run with another --out")


def _as_typed(flag: str, value: Any) -> str:
    """How a setting is written on the command line: --dropout / --no-dropout, --scale 4."""
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value}"


def load_config(path: Path, missing: str | None = None) -> BaseConfig:
    """A saved config.yaml (its recorded run facts are left out)."""
    from img2img.gan.checkpoint import CheckpointError  # a damaged run file is a failure, not a usage error

    path = Path(path)
    if not path.is_file():
        raise ConfigError(missing or f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not valid YAML ({reason}); the run's settings are damaged: restore the file, "
                              "or start a new run with another --out") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a config (a mapping of settings); the run's settings are damaged: "
                              "restore the file, or start a new run with another --out")
    task = str(data.pop("task", "pix2pix"))
    # Runs of earlier versions saved every family's settings: keep this family's.
    own, everyone = set(field_names(config_class(task))), {n for c in configs().values() for n in field_names(c)}
    return make_config(task, {k: v for k, v in data.items() if k in own or k not in everyone})


def save_config(cfg: BaseConfig, path: Path, **facts: Any) -> None:
    """config.yaml: the resolved settings, then facts of the run (processes, effective batch)."""
    from img2img.data.images import write_bytes_atomic

    write_bytes_atomic(path, yaml.safe_dump({**with_absolute_paths(cfg), **facts}, sort_keys=False).encode())


def with_absolute_paths(cfg: BaseConfig) -> dict[str, Any]:
    """The settings, folders and files as absolute paths: a run resumed from another working
    folder still finds its data."""
    settings = cfg.to_dict()
    for key, value in settings.items():
        option = option_of(type(cfg), key)
        if option is not None and option.path and value:
            settings[key] = os.path.abspath(value)
    return settings
