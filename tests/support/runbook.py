"""The commands of docs/operations.md, read from its console blocks and run verbatim by bash."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
BIN = ROOT / ".venv" / "bin"

# `producer` in the page stands for whatever writes params, one JSON object a line.
_PRODUCER = """producer() { printf '%s\\n' '{"invoice": 7}' '{"invoice": 8}'; }\n"""


@dataclass(frozen=True)
class Command:
    section: str
    line: str

    @property
    def program(self) -> str:
        """The program that does the work: the last one of a pipeline."""
        return self.line.split("|")[-1].split()[0]


def commands(section: str | None = None, program: str | None = None) -> list[Command]:
    """The ``$`` lines of the page's console blocks, comments removed, in page order."""
    found: list[Command] = []
    heading = ""
    in_console = False
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("```"):
            in_console = line.strip() == "```console"
        elif in_console and line.startswith("$ "):
            found.append(Command(heading, re.sub(r"\s{2,}#.*$", "", line[2:]).strip()))
    return [
        c
        for c in found
        if (section is None or c.section == section) and (program is None or c.program == program)
    ]


def run(
    command: Command, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one documented command as a user would, with the project's virtualenv on PATH."""
    return subprocess.run(
        ["bash", "-c", _PRODUCER + command.line],
        env={**env, "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(command: Command, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a documented command that runs in the foreground (``make supervise``)."""
    return subprocess.Popen(
        ["bash", "-c", command.line],
        env={**env, "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
