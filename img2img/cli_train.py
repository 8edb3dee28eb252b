"""The `train` commands, one per registered task, derived from the task's config dataclass:
each option's flag, help, panel and default are declared once, in config.py and the task
file, and every value is checked by config.resolve, as for the Python API."""

from __future__ import annotations

import inspect
from copy import copy
import os
import sys
import typing
from pathlib import Path
from typing import Optional

import typer

from img2img.config import field_types, flag_of, option_of, resolve
from img2img.console import RichReporter, fail, run_guarded, say
from img2img.data.header import set_max_pixels

MAX_PIXELS_HELP = "Refuse images with more pixels than this (decompression-bomb guard; default 256 million)."
LAUNCH = "Multi-GPU"
TRAIN_EXTRAS = [  # options of every train command that are not settings of the run
    ("resume", bool, typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint.",
                                  rich_help_panel="Run folder")),
    ("recipe", Optional[str], typer.Option(None, "--recipe", rich_help_panel="Recipe")),
    ("set_values", Optional[list[str]], typer.Option(None, "--set", rich_help_panel="Recipe", help=(
        "Override any setting: --set key=value (repeatable); `img2img recipes NAME` shows them."))),
    ("max_pixels", Optional[int], typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP, rich_help_panel="Data")),
    ("nproc_per_node", Optional[int], typer.Option(None, "--nproc-per-node", min=1, rich_help_panel=LAUNCH,
                                                   help="Processes (GPUs) per node: re-launches this command under torchrun.")),
    ("nnodes", int, typer.Option(1, "--nnodes", min=1, help="Nodes taking part (with --nproc-per-node).", rich_help_panel=LAUNCH)),
    ("node_rank", int, typer.Option(0, "--node-rank", min=0, help="This node's rank, 0 to nnodes-1.", rich_help_panel=LAUNCH)),
    ("rdzv_endpoint", Optional[str], typer.Option(None, "--rdzv-endpoint", rich_help_panel=LAUNCH,
                                                  help="HOST:PORT every node can reach (rank-0 node), for --nnodes > 1.")),
    ("max_restarts", int, typer.Option(0, "--max-restarts", min=0, rich_help_panel=LAUNCH, help=(
        "Elastic restarts after a failed process; restarted processes resume from the newest checkpoint."))),
]
LAUNCH_KEYS = ("nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "max_restarts")
PANEL_ORDER = ("Data", "Networks", "Losses", "Training", "Validation", "Run folder", "Recipe", "Hardware", LAUNCH)


def option_parameter(cls: type, name: str, hint: typing.Any, default: typing.Any) -> inspect.Parameter:
    """A config field as a Typer option: its flag(s), help with the family's default, panel."""
    option = option_of(cls, name)
    flags = flags_of(cls, name)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if base is bool:
        flags = [f"{flags[0]}/--no-{flags[0][2:]}"]
    base = Path if option.path else base
    shown = option.default_text or ({True: "on", False: "off"}.get(default, default) if base is bool else default)
    text = option.help + (f" (default: {shown})" if shown not in (None, "") else "")
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[base],
                             default=typer.Option(None, *flags, help=text, rich_help_panel=option.panel))


def flags_of(cls: type, name: str) -> list[str]:
    option = option_of(cls, name)
    return [flag_of(name, option), *option.aliases] if option else []


def train_parameters(task_class) -> list[inspect.Parameter]:
    from img2img import recipes

    cls, defaults = task_class.Config, task_class.Config()
    types = field_types(cls)
    options = [option_parameter(cls, name, hint, getattr(defaults, name)) for name, hint in types.items()
               if option_of(cls, name) is not None and option_of(cls, name).cli]
    aliases = {option_of(cls, name).flag_alias for name in types if option_of(cls, name)} - {None}
    for index, param in enumerate(options):  # srgan: --lr takes a learning rate or (as before) the LR folder
        if aliases & set(flags_of(cls, param.name)):
            options[index] = param.replace(annotation=Optional[str])
    # Copies: each command states its own recipes in --recipe's help.
    extras = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=t, default=copy(d)) for n, t, d in TRAIN_EXTRAS]
    own = [name for name in recipes.names() if recipes.task_of(name) == task_class.name]
    extras[1].default.help = ("Start from a recipe: a bundled name or a YAML file; flags override it. "
                              f"Bundled: {', '.join(own) or 'none'}.")
    params = options + extras
    return sorted(params, key=_help_order)


def _help_order(param: inspect.Parameter) -> tuple[int, bool]:
    """Panels in PANEL_ORDER (a family's own panels after them), folders first within a panel."""
    panel = param.default.rich_help_panel
    return PANEL_ORDER.index(panel) if panel in PANEL_ORDER else len(PANEL_ORDER), param.annotation is not Optional[Path]


def add_train_command(train_app: typer.Typer, task_class) -> None:
    params = train_parameters(task_class)

    def command(**values):
        _train(task_class, values)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    # One line per paragraph: rich keeps a docstring's line breaks, mid-sentence in a listing.
    summary = " ".join(inspect.getdoc(task_class).split())
    command.__doc__ = f"{summary}\n\nExample: {task_class.example}"
    train_app.command(task_class.name)(command)


def _train(task_class, values: dict) -> None:
    from img2img import api

    launch = {key: values.pop(key) for key in LAUNCH_KEYS}
    resume, recipe, sets = values.pop("resume"), values.pop("recipe"), values.pop("set_values") or []
    max_pixels = values.pop("max_pixels")
    if max_pixels:
        set_max_pixels(max_pixels)

    def action():
        cfg = resolve(task_class.name, recipe, _split_shared_flag(task_class.Config, values), resume, sets)
        if launch["nproc_per_node"] and "LOCAL_RANK" not in os.environ:
            _relaunch(launch)
        run_dir = api.train(cfg, resume=resume, reporter=RichReporter())
        if os.environ.get("RANK", "0") == "0":
            say(f"run folder: {run_dir} (generator in {run_dir / 'checkpoints'})")

    run_guarded(action)


def _split_shared_flag(cls: type, values: dict) -> dict:
    """srgan's --lr: a number is the learning rate; anything else is the LR folder (its old flag)."""
    for name in field_types(cls):
        alias = getattr(option_of(cls, name), "flag_alias", None)
        owner = next((n for n in values if alias and alias in flags_of(cls, n)), None)
        if owner is not None and isinstance(values[owner], str):
            try:
                values[owner] = float(values[owner])
            except ValueError:
                values[owner], values[name] = None, values[owner]
    return values


def _relaunch(launch: dict) -> None:
    from img2img.gan import distributed

    try:
        code = distributed.relaunch(sys.argv[1:], **launch)
    except ValueError as err:
        fail(str(err), 2)
    raise typer.Exit(code)
