"""``make conformance``: the official Durable Streams server conformance suite against this repo's Procfile stack.

Starts an embedded Redis and the Procfile's ``web``, ``worker`` and ``consumer`` the way the end-to-end tests do
(``tests.support.stack.running_stack``), with ``DURABLE_STREAMS_PUBLIC=1`` (the suite sends no API key) and a short
``DURABLE_STREAMS_LONG_POLL_S`` (several of its long-poll tests wait for the server's ``204`` within vitest's 5 s
test timeout). Runs the npm package ``@durable-streams/server-conformance-tests`` (pinned: ``SUITE_VERSION``,
installed once into ``.venv/conformance/``) against the web's base URL, and writes ``docs/conformance-results.md``:
passed / failed / skipped per top-level ``describe`` section, the totals, and the failed tests of each section.

The package's own CLI (``server-conformance-tests --run <url>``) cannot be used as published: it looks for vitest
in the wrong places (it falls back to the one on PATH), passes vitest a test file inside ``node_modules`` (which
vitest 4 never includes: "No test files found"), and its reporter is fixed to ``default``. So this script runs what
the package's README calls programmatic use: a one-line test file next to ``node_modules`` that calls
``runConformanceTests({ baseUrl })``, exactly as the package's ``test-runner`` does, under vitest with its JSON
reporter.

    python scripts/conformance.py                             # start the stack, run the suite, write the summary
    python scripts/conformance.py --url http://127.0.0.1:8000 # against a server already running (nothing started)

Exit status: 0 when the suite ran (whatever failed in it: the results are the product); 1 when it could not run to
the end (the stack did not start, vitest crashed or went past ``--timeout``); 2 when Node.js or npm is missing or
the suite could not be installed. Raw output: ``test-artifacts/conformance/`` (vitest's log, its JSON report) and
``test-artifacts/conformance-logs/`` (the stack's processes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

ROOT = Path(__file__).resolve().parent.parent

SUITE_PACKAGE = "@durable-streams/server-conformance-tests"
SUITE_VERSION = "0.3.6"  # the newest on npm when this was written; `npm view <SUITE_PACKAGE> version`
CACHE = ROOT / ".venv" / "conformance"
SUITE_DIR = CACHE / "node_modules" / SUITE_PACKAGE
VITEST = CACHE / "node_modules" / "vitest" / "vitest.mjs"
# What the package's test-runner does, in a file vitest will collect (it never collects one under node_modules).
TEST_FILE_NAME = "conformance.test.mjs"
TEST_FILE = f"""\
// Written by scripts/conformance.py: the suite as the package's own test-runner runs it.
import {{ runConformanceTests }} from "{SUITE_PACKAGE}"

runConformanceTests({{ baseUrl: process.env.CONFORMANCE_TEST_URL }})
"""
# vitest 4 runs on these majors of Node.js.
NODE_MAJORS = "20, 22 or 24+"

RESULTS_MD = ROOT / "docs" / "conformance-results.md"
ARTIFACTS = ROOT / "test-artifacts" / "conformance"
STACK_LOGS = ROOT / "test-artifacts" / "conformance-logs"

STACK_ENV = {
    # The suite sends no API key: the write path lets /v1/stream/ through without one when this is set.
    "DURABLE_STREAMS_PUBLIC": "1",
    # A long-poll that finds nothing answers 204 after this long; some tests wait for it within 5 s.
    "DURABLE_STREAMS_LONG_POLL_S": "2",
    # The suite's CORS preflight test asks as a page of this origin would.
    "CORS_ORIGINS": "https://example.com",
    # Every request of the suite comes from one address without a key: one rate-limit bucket for all of them.
    "RATE_LIMIT": "",
    "LOG_LEVEL": "WARNING",
}
# The settings the summary names.
SHOWN_ENV = ("DURABLE_STREAMS_PUBLIC", "DURABLE_STREAMS_LONG_POLL_S", "CORS_ORIGINS")
DEFAULT_TIMEOUT_S = 15 * 60
INSTALL_TIMEOUT_S = 5 * 60
# A failed test's first line of error in the summary, at most this long.
MESSAGE_CHARS = 160
# A section with more failed tests than this has its list collapsed.
COLLAPSE_OVER = 10

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# vitest's banners before the details of failed tests and of errors no test caught (its output without colours).
_DETAILS = re.compile(r"⎯+ (Failed Tests \d+|Unhandled Errors) ⎯+")
_UNHANDLED = re.compile(r"⎯+ Unhandled (Error|Rejection) ⎯+")
_LATEST_TEST = re.compile(r'The latest test that might.ve caused the error is "(.*)"')


class CannotRun(Exception):
    """The suite could not run; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- installing the suite --------------------------------------------------------------------------------------------


def check_tools() -> str:
    """Node.js and npm on PATH, Node.js new enough for vitest 4; its version."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise CannotRun(
                f"`{tool}` is not on PATH: the Durable Streams conformance suite is an npm package run by Node.js "
                f"({NODE_MAJORS}). Install Node.js with npm (https://nodejs.org/) and run `make conformance` again.",
                status=2,
            )
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major[1]) < 20 or int(major[1]) in (21, 23):
        raise CannotRun(f"Node.js {version or '(unknown version)'} cannot run vitest 4: use {NODE_MAJORS}.", 2)
    return version


def installed_version(package_dir: Path) -> str | None:
    try:
        version = json.loads((package_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


def ensure_suite() -> None:
    """``SUITE_PACKAGE@SUITE_VERSION`` (and its vitest) under ``CACHE``, installed only when it is not there yet."""
    if installed_version(SUITE_DIR) == SUITE_VERSION and VITEST.is_file():
        return
    print(f"Installing {SUITE_PACKAGE}@{SUITE_VERSION} into {CACHE.relative_to(ROOT)} ...", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [
        "npm",
        "install",
        "--prefix",
        str(CACHE),
        "--no-audit",
        "--no-fund",
        "--save-exact",
        f"{SUITE_PACKAGE}@{SUITE_VERSION}",
    ]
    try:
        done = subprocess.run(command, cwd=CACHE, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise CannotRun(f"`{' '.join(command)}` took more than {INSTALL_TIMEOUT_S} s", status=2) from exc
    if done.returncode != 0 or installed_version(SUITE_DIR) != SUITE_VERSION or not VITEST.is_file():
        raise CannotRun(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}", status=2)


# -- running it ------------------------------------------------------------------------------------------------------


def _tee(source: TextIO, log: TextIO) -> None:
    """vitest's output to ``log``, and to the console without the details of the failures (the summary has them)."""
    echo = True
    for line in source:
        log.write(line)
        log.flush()
        if _DETAILS.search(line):
            if echo:
                sys.stdout.write(f"\n(details of the failures and errors: {log.name})\n")
            echo = False
        elif line.strip().startswith("Test Files"):
            echo = True
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM vitest's process group (its workers too), SIGKILL what is left 10 s later."""
    for signum, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)
            return


def run_suite(base_url: str, timeout_s: float, report: Path, log_path: Path) -> float:
    """vitest with the suite against ``base_url``: its output to the console and ``log_path``, its JSON report to
    ``report``. Stopped after ``timeout_s`` whatever happens. How long it ran, in seconds."""
    (CACHE / TEST_FILE_NAME).write_text(TEST_FILE)
    report.unlink(missing_ok=True)
    command = [
        "node",
        str(VITEST),
        "run",
        TEST_FILE_NAME,
        "--no-coverage",
        "--passWithNoTests=false",
        "--reporter=dot",
        "--reporter=json",
        f"--outputFile.json={report}",
    ]
    env = {**os.environ, "CONFORMANCE_TEST_URL": base_url, "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    print(f"Running {SUITE_PACKAGE}@{SUITE_VERSION} against {base_url} (at most {timeout_s:.0f} s) ...", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=CACHE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert process.stdout is not None
        reader = threading.Thread(target=_tee, args=(process.stdout, log), daemon=True)
        reader.start()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise CannotRun(f"the suite was still running after {timeout_s:.0f} s: stopped (see {log_path})") from exc
        finally:
            if process.poll() is None:
                _stop_group(process)
            reader.join(5)
    if not report.is_file():
        raise CannotRun(f"vitest exited with {process.returncode} and wrote no report (see {log_path})")
    return time.monotonic() - started


# -- the summary -----------------------------------------------------------------------------------------------------


@dataclass
class Failure:
    name: str
    message: str


@dataclass
class Section:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped


def _first_line(messages: list[str]) -> str:
    for message in messages:
        for line in _ANSI.sub("", message).splitlines():
            if line.strip():
                line = line.strip()
                return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"
    return ""


def sections_of(report: dict[str, Any]) -> list[Section]:
    """Counts per top-level ``describe``, in the suite's order; a file that failed as a whole is an error."""
    sections: dict[str, Section] = {}
    for file in report.get("testResults", []):
        tests = file.get("assertionResults", [])
        if not tests and file.get("status") == "failed":
            raise CannotRun(f"the suite failed before any test ran:\n{_ANSI.sub('', file.get('message', ''))}")
        for test in tests:
            ancestors = list(test.get("ancestorTitles", []))
            top = ancestors[0] if ancestors else "(no section)"
            section = sections.setdefault(top, Section(top))
            status = test.get("status")
            if status == "passed":
                section.passed += 1
            elif status == "failed":
                section.failed += 1
                name = " > ".join([*ancestors[1:], test.get("title", "?")])
                section.failures.append(Failure(name, _first_line(test.get("failureMessages", []))))
            else:  # skipped, pending, todo
                section.skipped += 1
    if not sections:
        raise CannotRun("the suite's report has no tests")
    return list(sections.values())


def unhandled_errors(log: str) -> list[str]:
    """The errors vitest caught outside any test (not in its JSON report): each one's first line, and the test that
    was running when it came."""
    errors: list[str] = []
    lines = _ANSI.sub("", log).splitlines()
    for i, line in enumerate(lines):
        if not _UNHANDLED.search(line):
            continue
        following = lines[i + 1 : i + 40]
        error = next((x.strip() for x in following if x.strip()), "?")
        latest = next((m[1] for x in following if (m := _LATEST_TEST.search(x))), None)
        errors.append(f"{_code(error)}" + (f', during the test "{_cell(latest)}"' if latest else ""))
    return errors


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`" if text else ""


def _revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return f"{commit} with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else commit


def markdown(
    sections: list[Section], errors: list[str], *, target: str, node: str, vitest: str, suite_s: float, elapsed_s: float
) -> str:
    total = Section("Total")
    for section in sections:
        total.passed += section.passed
        total.failed += section.failed
        total.skipped += section.skipped
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Durable Streams conformance",
        "",
        f"Written by `make conformance` (`scripts/conformance.py`) on {now}: the official suite "
        f"`{SUITE_PACKAGE}@{SUITE_VERSION}` (vitest {vitest}, Node.js {node}) against {target}, "
        f"at revision {_revision()}. The suite took {suite_s:.0f} s ({elapsed_s:.0f} s with starting and stopping).",
        "",
        f"**{total.passed} passed, {total.failed} failed, {total.skipped} skipped** of {total.total} tests.",
        "",
        "| Section | Passed | Failed | Skipped | Total |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s in [*sections, total]:
        name = f"**{s.name}**" if s is total else _cell(s.name)
        lines.append(f"| {name} | {s.passed} | {s.failed} | {s.skipped} | {s.total} |")
    if errors:
        lines += ["", f"vitest also caught {len(errors)} error(s) outside any test's own checks:", ""]
        lines += [f"- {error}" for error in errors]
    failing = [s for s in sections if s.failures]
    if failing:
        lines += ["", "## Failed tests", "", "The first line of each test's error."]
    for section in failing:
        items = [f"- {_cell(f.name)}" + (f": {_code(f.message)}" if f.message else "") for f in section.failures]
        lines += ["", f"### {section.name} ({section.failed} failed)", ""]
        if len(items) > COLLAPSE_OVER:
            lines += ["<details>", f"<summary>{section.failed} failed tests</summary>", "", *items, "", "</details>"]
        else:
            lines += items
    return "\n".join(lines) + "\n"


def print_table(sections: list[Section]) -> None:
    width = max(len(s.name) for s in sections)
    print(f"\n{'Section':<{width}}  {'passed':>6}  {'failed':>6}  {'skipped':>7}")
    totals = [0, 0, 0]
    for s in sections:
        print(f"{s.name:<{width}}  {s.passed:>6}  {s.failed:>6}  {s.skipped:>7}")
        totals = [totals[0] + s.passed, totals[1] + s.failed, totals[2] + s.skipped]
    print(f"{'Total':<{width}}  {totals[0]:>6}  {totals[1]:>6}  {totals[2]:>7}")


# -- main ------------------------------------------------------------------------------------------------------------


class _Stack(Protocol):
    @property
    def base_url(self) -> str: ...


def running_stack(directory: Path, logs: Path, env: dict[str, str]) -> AbstractContextManager[_Stack]:
    """``tests.support.stack.running_stack``: Redis, web, worker and consumer started as the end-to-end tests start
    them, and stopped on the way out. Imported by name: the test helpers are not type-checked (mypy's packages)."""
    if str(ROOT) not in sys.path:  # run as ``python scripts/conformance.py``
        sys.path.insert(0, str(ROOT))
    stack: Any = importlib.import_module("tests.support.stack")
    context: AbstractContextManager[_Stack] = stack.running_stack(directory, logs, **env)
    return context


@contextlib.contextmanager
def _target(url: str | None) -> Iterator[tuple[str, str]]:
    """The base URL to test and how the summary names it: ``url``, or a stack of the Procfile started for the run."""
    if url:
        yield url.rstrip("/"), f"the server at {url}"
        return
    env = " ".join(f"{k}={STACK_ENV[k]}" for k in SHOWN_ENV)
    print(f"Starting Redis and the Procfile's web, worker and consumer ({env}) ...", flush=True)
    with contextlib.ExitStack() as on_exit:
        directory = Path(on_exit.enter_context(tempfile.TemporaryDirectory(prefix="conformance-redis-")))
        try:
            stack = on_exit.enter_context(running_stack(directory, STACK_LOGS, STACK_ENV))
        except Exception as exc:
            raise CannotRun(f"the stack did not start: {exc} (see {STACK_LOGS.relative_to(ROOT)})") from exc
        yield stack.base_url, f"this repo's Procfile stack (web, worker, consumer on an embedded Redis; {env})"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds, so the stack and vitest are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="test the server at this base URL instead of starting the stack")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("CONFORMANCE_TIMEOUT_S", DEFAULT_TIMEOUT_S)),
        help="stop the suite after this many seconds (default: CONFORMANCE_TIMEOUT_S or %(default)s)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_MD, help="the summary (default: %(default)s)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report_path, log_path = ARTIFACTS / "results.json", ARTIFACTS / "vitest.log"
    try:
        node = check_tools()
        ensure_suite()
        started = time.monotonic()
        with _target(args.url) as (base_url, target):
            suite_s = run_suite(base_url, args.timeout, report_path, log_path)
        elapsed_s = time.monotonic() - started
        sections = sections_of(json.loads(report_path.read_text()))
    except CannotRun as exc:
        print(f"\nconformance: {exc}", file=sys.stderr)
        return exc.status
    vitest = installed_version(VITEST.parent) or "?"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        markdown(
            sections,
            unhandled_errors(log_path.read_text(errors="replace")),
            target=target,
            node=node,
            vitest=vitest,
            suite_s=suite_s,
            elapsed_s=elapsed_s,
        )
    )
    print_table(sections)
    print(f"\nWrote {args.output} (raw: {report_path}, {log_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
