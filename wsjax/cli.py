"""Shared helpers for the command-line entry points: one-line errors, non-zero exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from wsjax.errors import WsjaxError

__all__ = ["run_cli", "ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Calls main(argv); a WsjaxError becomes `error: <message>` on stderr and exit status 2."""
    try:
        code = main(argv)
    except WsjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(code or 0)
