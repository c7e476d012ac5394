"""Command-line argument handling shared by ``orbit`` and ``python -m app.worker``."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse's default adds the usage)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def run_id(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a run id is a whole number, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"a run id is a positive number, not {value!r}")
    return number
