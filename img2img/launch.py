"""The `img2img` command's entry point: Ctrl-C while the command is still importing its
libraries (a second or more for torch) ends it quietly, as it does once the command runs, and
SIGTERM (`kill`, a batch system's stop) ends it as Ctrl-C does, with its own exit code."""

import os
import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is: every clean-up that Ctrl-C runs (temporary files,
    workers) runs for it too. Training replaces the handler with its own (a checkpoint first)."""

    exit_code = 128 + signal.SIGTERM
    message = "stopped by SIGTERM"


def _terminate(signum, frame) -> None:
    _stop_unless_importing(frame, Terminated())
    raise Terminated


def _interrupt(signum, frame) -> None:
    _stop_unless_importing(frame, KeyboardInterrupt())
    raise KeyboardInterrupt


def _stop_unless_importing(frame, stop: KeyboardInterrupt) -> None:
    """A stop raised while a module is being imported can land inside an extension's own
    initialisation (pybind11 then aborts the process: "terminate called ..."). Nothing of ours
    needs cleaning up while importing: the process ends at once, with the word and the code."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            sys.stderr.write(getattr(stop, "message", "interrupted") + "\n")
            sys.stderr.flush()
            os._exit(exit_code(stop))
        frame = frame.f_back


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        if (problem := empty_argument(sys.argv[1:])) is not None:
            from img2img.console import print_error

            print_error(problem)
            raise SystemExit(2)
        from img2img.cli import app

        app()
    except KeyboardInterrupt as stop:
        _say_interrupted(stop)
        raise SystemExit(exit_code(stop)) from None
    except SystemExit as stop:
        if stop.code == 130:  # the command line library's silent Ctrl-C
            _say_interrupted(KeyboardInterrupt())
        raise
    finally:  # the work is over: a SIGTERM now ends the process as the signal does, not in a clean-up
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_code(stop: KeyboardInterrupt) -> int:
    return getattr(stop, "exit_code", 130)


def _say_interrupted(stop: KeyboardInterrupt) -> None:
    say_interrupted = getattr(sys.modules.get("img2img.console"), "say_interrupted", None)
    if say_interrupted is None:  # Ctrl-C while the libraries were still importing
        sys.stderr.write(getattr(stop, "message", "interrupted") + "\n")
    else:
        say_interrupted(stop)


def empty_argument(arguments: list[str]) -> str | None:
    """What is wrong with an empty argument (an unset shell variable in quotes), or None: the
    command line parser reads '' as the current folder, which then became a run or output folder."""
    for index, argument in enumerate(arguments):
        flag, equals, value = argument.partition("=")
        if argument.startswith("--") and equals and not value.strip():
            return f"{flag} is given an empty value: give a path or value there (is a shell variable unset?)"
        if not argument.strip():
            before = arguments[index - 1] if index else ""
            where = f"after {before}" if before.startswith("-") else f"as argument {index + 1}"
            return f"an empty argument {where}: give a path or value there (is a shell variable unset?)"
    return None
