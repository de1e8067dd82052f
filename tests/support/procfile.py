"""Reads the Procfile so that tests start each process exactly the way a Procfile runner does."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def procfile_commands(path: Path = ROOT / "Procfile") -> dict[str, str]:
    commands: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        commands[name.strip()] = command.strip()
    return commands
