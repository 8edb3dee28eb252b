"""The terminal side of the CLI: rich progress and messages on stderr, and the rule that turns
a user's mistake into one message and an exit code (0 success, 1 failure, 2 usage), never a
traceback."""

from __future__ import annotations

import os
import sys
import time

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from img2img.config import ConfigError
from img2img.data.datasets import DataError
from img2img.data.header import ImageError
from img2img.data.images import WriteError
from img2img.data.quiet import codec_noise_filtered
from img2img.gan.checkpoint import CheckpointError
from img2img.gan.loop import TrainingStopped
from img2img.gan.record import TrainingDiverged
from img2img.infer import InputError
from img2img.launch import exit_code

# soft_wrap: a message is never cut inside a word, URL or path, on a terminal or in a log file.
console = Console(stderr=True, soft_wrap=True)


class OutputError(Exception):
    """Standard output, where results for programs go, is full, closed or failing."""


class ReaderGone(Exception):
    """The program reading standard output has ended (`| head -1`)."""


USAGE_ERRORS = (ConfigError, InputError)
FAILURES = (DataError, CheckpointError, ImageError, WriteError, OutputError, TrainingDiverged)


def to_stdout(text: str, end: str = "\n") -> None:
    """A result for programs, on stdout, flushed as it comes (a pipeline reads each line when it
    is made). Where nothing can take it, the command ends: quietly when the reader has gone, as
    Unix tools do, else with a message, never a traceback."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise OutputError("standard output is closed, so the results cannot be written: redirect it to a file "
                          "(> results.txt) or to /dev/null")
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except BrokenPipeError:
        # The interpreter flushes stdout again at exit: to /dev/null, where that cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise ReaderGone from None
    except OSError as err:
        raise OutputError(f"standard output could not be written ({err.strerror or err}), so the command "
                          "stopped there") from None


class RichReporter:
    """The library's Reporter, drawn with rich on stderr; plain lines when stderr is a log file."""

    PLAIN_EVERY_S = 10.0

    def __init__(self):
        self.progress: Progress | None = None
        self.plain = not console.is_terminal
        self.total, self.description, self.last_line, self.task_id = 0, "", 0.0, None

    def start(self, total: int, done: int, description: str) -> None:
        self.total, self.description = total, description
        if self.plain:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False)
        self.progress.start()
        self.task_id = self.progress.add_task(description, total=total, completed=done, info="")

    def update(self, done: int, info: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=done, **({"info": escape(info)} if info else {}))
        elif self.plain and (time.monotonic() - self.last_line > self.PLAIN_EVERY_S or done == self.total):
            self.last_line = time.monotonic()
            say(f"{self.description} {done}/{self.total} {info}")

    def message(self, text: str) -> None:
        say(text)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def say(text: str, style: str = "") -> None:
    """A message of the library's on stderr: its text is never read as rich markup (`[onnx]`)."""
    console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), highlight=False)


def fail(message: str, code: int) -> None:
    print_error(message)
    raise typer.Exit(code)


def print_error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def run_guarded(action, to_continue: str = "run the same command with --resume"):
    """Run `action`, turning the user's mistakes into a message and an exit code, not a traceback;
    the codec libraries' own messages are dropped (one line per bad file is ours to print).
    `to_continue`: what a stopped training run says to do next."""
    try:
        with codec_noise_filtered():
            return action()
    except USAGE_ERRORS as err:
        fail(err.message, 2)
    except FAILURES as err:
        fail(str(err), 1)
    except ReaderGone:
        raise typer.Exit(128 + 13)  # SIGPIPE's exit status, as a shell reports a tool it ended
    except TrainingStopped as stop:
        _told["interrupted"] = True
        if os.environ.get("RANK", "0") == "0":  # one line for the run, not one per process
            say(f"{stop}; a checkpoint was written: {to_continue} to continue")
        raise typer.Exit(128 + stop.signum)
    except KeyboardInterrupt as stop:
        say_interrupted(stop)
        raise typer.Exit(exit_code(stop))


_told = {"interrupted": False}


def say_interrupted(stop: KeyboardInterrupt | None = None) -> None:
    """'interrupted' (or 'stopped by SIGTERM'), once: Ctrl-C can land in our handler or, between
    them, in the command line library's, which exits 130 without a word (img2img.launch adds it
    there)."""
    if not _told["interrupted"]:
        _told["interrupted"] = True
        say(getattr(stop, "message", "interrupted"))


def list_and_exit(what: str, problems: list[str]) -> None:
    """Name every problem, then exit 1; nothing when there are none."""
    if problems:
        say(f"{len(problems)} {what}:", "red")
        for problem in problems:
            say(f"  {problem.strip()}")
        raise typer.Exit(1)
