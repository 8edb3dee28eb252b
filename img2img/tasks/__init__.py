"""One module per model family, each registering a Task subclass (with its Config) by name.

Every module of this package is imported here, so adding a family is adding its file: the
`train` command, `--set` and recipes find it through TASKS.
"""

from __future__ import annotations

import importlib
import pkgutil

TASKS: dict = {}  # name -> Task subclass


def register(task_class):
    """Class decorator: make a Task subclass trainable under its `name`."""
    TASKS[task_class.name] = task_class
    return task_class


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
