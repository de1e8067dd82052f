"""The ``tokenbridge`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenbridge", description="Relay LLM tokens through Redis Streams.")
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run embedded Redis, web, worker, consumer and Flower (Ctrl-C stops)")
    dev.add_argument("--port", type=int, default=8000, help="port of web; Flower gets port + 300")
    dev.add_argument("--procfile", default="Procfile")
    args = parser.parse_args(argv)
    if args.command == "dev":
        from bridge.devserver import run_dev

        return run_dev(port=args.port, procfile=args.procfile)
    return 2


if __name__ == "__main__":
    sys.exit(main())
