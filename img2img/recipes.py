"""YAML recipes for the classic setups: `train --recipe NAME|FILE`, `img2img recipes [NAME]`.

A recipe is a flat mapping of one family's config settings plus `task`, with comments saying where
its numbers come from and what data layout it expects.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

import yaml

from img2img.config import ConfigError, check_value, config_class, configs
from img2img.resources import shipped

RECIPES = shipped("recipes")


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def path_of(name_or_file: str) -> Path:
    candidate = Path(name_or_file)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    if (RECIPES / f"{name_or_file}.yaml").is_file():
        return RECIPES / f"{name_or_file}.yaml"
    close = difflib.get_close_matches(name_or_file, names(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known recipes: {', '.join(names())}"
    raise ConfigError(f"no recipe {name_or_file!r} (neither a bundled recipe nor a .yaml file){hint}")


def load(name_or_file: str, command_task: str | None = None) -> tuple[str, dict[str, Any]]:
    """(task, checked settings) of a recipe. A user's file may leave out `task` when the train
    command names it (`command_task`)."""
    path = path_of(name_or_file)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeys)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err.message}") from None
    if data is None or (isinstance(data, dict) and not data.keys() - {"task"}):  # a template that rendered nothing
        raise ConfigError(f"{path}: the recipe holds no settings")
    if not isinstance(data, dict) or ("task" not in data and command_task is None):
        raise ConfigError(f"{path}: a recipe is a mapping of settings, with the 'task' ({', '.join(configs())}) "
                          "where the command names none")
    task = data.pop("task", command_task)
    if data.get("steps") is not None and data.get("epochs") is not None:
        raise ConfigError(f"{path}: steps and epochs both given: a run's length is one or the other")
    try:
        cls = config_class(str(task))
        return task, {key: check_value(key, value, cls) for key, value in data.items()}
    except ConfigError as err:
        raise ConfigError(f"{path}: {err.message}") from None


class _UniqueKeys(yaml.SafeLoader):
    """safe_load, but a key given twice is an error, not the last one silently winning (a
    copy-paste slip in a hand-edited recipe)."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in lines:
                raise ConfigError(f"{key!r} is given twice, on lines {lines[key]} and {key_node.start_mark.line + 1}")
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


@functools.cache
def task_of(name: str) -> str:
    """The task a bundled recipe trains. Cached, and read with libyaml's parser where installed:
    every train command lists its recipes in its help, which `img2img` builds at each start."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return str((yaml.load((RECIPES / f"{name}.yaml").read_text(), Loader=loader) or {}).get("task", ""))


def summary(name: str) -> str:
    """The recipe's first comment line."""
    first = (RECIPES / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("# ").strip()


def text(name_or_file: str) -> str:
    return path_of(name_or_file).read_text()
