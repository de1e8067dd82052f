"""The shape of the code: functions a newcomer can read (complexity is ruff's C90 rule, max 12), modules of one job."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["app", "bridge", "tasks", "workers", "tokenbridge", "bench"]
MAX_LINES = 60
REASON = "# Long: "


def _long_functions_without_a_reason() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                above = lines[first - 2].strip() if first >= 2 else ""
                if length > MAX_LINES and not above.startswith(REASON):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_every_function_over_60_lines_says_why_next_to_it() -> None:
    assert _long_functions_without_a_reason() == [], f"split it, or write '{REASON}<why>' on the line above"


def test_no_server_module_is_over_500_lines() -> None:
    # The server's packages read as small modules: one over 500 lines holds more than one job.
    long = [
        f"{path.relative_to(ROOT)} ({count} lines)"
        for package in ("app", "bridge", "tasks", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (count := len(path.read_text().splitlines())) > 500
    ]
    assert long == [], "split it along a seam of its own"
