"""The `img2img` command's entry point: Ctrl-C while the command is still importing its
libraries (a second or more for torch) ends it quietly, as it does once the command runs."""

import sys


def main() -> None:
    try:
        from img2img.cli import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
