"""The ``smartpole`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.configfile import ConfigError, load_config, read_toml, validate

EXIT_CONFIG = 2


def _config_kind(doc: dict[str, Any]) -> str:
    return "receiver" if "receiver" in doc and "pole" not in doc else "pole"


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.config import PoleConfig
    from receiver.config import ReceiverConfig

    path = Path(args.file)
    try:
        doc, _ = read_toml(path)
        kind = args.kind if args.kind != "auto" else _config_kind(doc)
        validate(ReceiverConfig if kind == "receiver" else PoleConfig, doc, path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print("ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.config import PoleConfig
    from gateway.daemon import run_daemon

    try:
        config = load_config(Path(args.config), PoleConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    return run_daemon(config, Path(args.config))


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(Path(args.workdir), duration=args.duration)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartpole",
        description="SmartPole: the street-pole gateway daemon, its cloud receiver and tools for technicians.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the pole daemon",
        description="Run the pole daemon: outbox, sync, local API. Stops cleanly on SIGTERM or Ctrl-C.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="pole configuration (TOML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="run the product on this machine with embedded defaults",
        description="Run the embedded demo on localhost with its files under --workdir. "
        "Stops on Ctrl-C or after --duration seconds.",
    )
    p.add_argument("--workdir", default="var/demo", metavar="DIR", help="where the demo keeps its files (default: %(default)s)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a pole or receiver configuration file. Prints 'ok', or every problem as "
        "'FILE: dotted.key: why' and exits with status 2.",
    )
    p.add_argument("file", metavar="FILE", help="the TOML file")
    p.add_argument(
        "--kind",
        choices=["auto", "pole", "receiver"],
        default="auto",
        help="which kind of file (default: a file with a [receiver] table and no [pole] table is a receiver's)",
    )
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
