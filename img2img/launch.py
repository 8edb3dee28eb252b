"""The `img2img` command's entry point: Ctrl-C while the command is still importing its
libraries (a second or more for torch) ends it quietly, as it does once the command runs."""

import sys


def main() -> None:
    try:
        if (problem := empty_argument(sys.argv[1:])) is not None:
            from img2img.console import print_error

            print_error(problem)
            raise SystemExit(2)
        from img2img.cli import app

        app()
    except KeyboardInterrupt:
        _say_interrupted()
        raise SystemExit(130) from None
    except SystemExit as stop:
        if stop.code == 130:
            _say_interrupted()
        raise


def _say_interrupted() -> None:
    say_interrupted = getattr(sys.modules.get("img2img.console"), "say_interrupted", None)
    if say_interrupted is None:  # Ctrl-C while the libraries were still importing
        sys.stderr.write("interrupted\n")
    else:
        say_interrupted()


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
