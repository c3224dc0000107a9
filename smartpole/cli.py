"""The ``smartpole`` command."""

from __future__ import annotations

import argparse
import re
import sys
import time
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
    if args.effective or args.overlay:
        return _effective_config(path, Path(args.overlay) if args.overlay else None)
    try:
        doc, _ = read_toml(path)
        kind = args.kind if args.kind != "auto" else _config_kind(doc)
        validate(ReceiverConfig if kind == "receiver" else PoleConfig, doc, path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print("ok")
    return 0


def _effective_config(path: Path, overlay_path: Path | None) -> int:
    """``check-config --effective``: the pole file with a remote overlay applied, as JSON, secrets masked.
    The overlay is ``--overlay FILE`` (a remote-config.json, or a bare overlay in JSON or TOML as sent to
    the receiver), else the one persisted in the pole's state directory, if any."""
    import copy
    import json

    from gateway.config import PoleConfig
    from gateway.remote import overlay_file, read_overlay
    from gateway.remote_config import OverlayError, effective_config, overlay_version, validate_overlay

    try:
        doc, _ = read_toml(path)
        base = validate(PoleConfig, copy.deepcopy(doc), path)
        source = overlay_path or overlay_file(base)
        overlay: Any = {}
        if overlay_path is not None and overlay_path.suffix == ".toml":
            overlay, _ = read_toml(overlay_path)
        elif overlay_path is not None:
            raw = json.loads(overlay_path.read_text())
            persisted = isinstance(raw, dict) and set(raw) == {"version", "overlay"}
            overlay = raw["overlay"] if persisted else raw
        else:
            stored = read_overlay(source)
            overlay = stored[0] if stored is not None else {}
        overlay = validate_overlay(overlay)
        config = effective_config(doc, overlay, source)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except OverlayError as exc:
        print("\n".join(f"{source}: {p}" for p in exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, ValueError) as exc:
        print(f"{source}: cannot read: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    print(
        f"remote overlay {overlay_version(overlay)} from {source}" if overlay else "no remote overlay", file=sys.stderr
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import default_config_path, run_daemon
    from gateway.remote import load_effective

    path = Path(args.config) if args.config else default_config_path()
    try:
        loaded = load_effective(path)  # the file, with the remote overlay persisted in the state directory
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    return run_daemon(loaded, path)


def cmd_receiver(args: argparse.Namespace) -> int:
    import asyncio

    import uvloop

    from gateway.logs import configure_logging
    from receiver import service
    from receiver.auth import token_hash
    from receiver.config import ReceiverConfig
    from receiver.store.base import token_id_of

    config_file = getattr(args, "config", None)  # absent unless given, before or after the action
    if not config_file:
        print("smartpole receiver: --config FILE is required", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(Path(config_file), ReceiverConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    action = getattr(args, "action", None)
    if action == "add-pole":
        token = uvloop.run(service.add_pole(config, args.pole_id))
        print(token)
        print(
            f"pole {args.pole_id}: token above (id {token_id_of(token_hash(token))}), shown once; "
            "set it as SMARTPOLE_UPLINK_TOKEN on the pole",
            file=sys.stderr,
        )
        if args.mosquitto:
            from receiver.mosquitto import password_line

            print(password_line(args.pole_id, token))
            print(
                "the line above goes in the broker's password_file (the pole logs in with its id and this token); "
                "reload Mosquitto with SIGHUP",
                file=sys.stderr,
            )
        return 0
    if action == "add-admin":
        token = uvloop.run(service.add_admin(config, args.name))
        print(token)
        print(
            f"admin {args.name}: token above (id {token_id_of(token_hash(token))}), shown once; it registers, "
            "revokes and configures poles",
            file=sys.stderr,
        )
        return 0
    if action == "add-reader":
        token = uvloop.run(service.add_reader(config, args.name))
        print(token)
        print(f"reader {args.name}: token above (id {token_id_of(token_hash(token))}), shown once", file=sys.stderr)
        return 0
    if action == "add-user":
        return _add_user(config, args)
    if action == "list-tokens":
        print(format_tokens(uvloop.run(service.list_tokens(config))))
        return 0
    if action == "revoke-token":
        try:
            revoked_id = uvloop.run(service.revoke_token(config, args.token_id))
        except LookupError as exc:
            print(f"smartpole receiver revoke-token: {exc}", file=sys.stderr)
            return 1
        print(f"token {revoked_id} revoked")
        return 0
    if action == "maintain":
        import json

        from receiver.store.base import StoreError

        try:
            summary = uvloop.run(service.maintain(config))
        except StoreError as exc:
            print(f"smartpole receiver maintain: database unavailable: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(summary.as_dict()))
        return 0
    if action == "revoke-pole":
        revoked = uvloop.run(service.revoke_pole(config, args.pole_id))
        print(f"pole {args.pole_id}: {revoked} token(s) revoked")
        return 0 if revoked else 1

    configure_logging(config.logging.level, config.logging.format, service="receiver")
    workers, worker = getattr(args, "workers", 1), getattr(args, "worker", None)
    if workers > 1 and worker is None:
        return _supervise_workers(config_file, workers, config.receiver.port, config.receiver.shutdown_timeout_s)

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.serve(config, stop, worker=worker)

    uvloop.run(main())
    return 0


MIN_PASSWORD = 8


def _add_user(config: Any, args: argparse.Namespace) -> int:
    """``receiver add-user``: the password from --password, else asked twice without echo."""
    import getpass

    import uvloop

    from receiver import service
    from receiver.store.base import USER_NAME_PATTERN

    if not re.fullmatch(USER_NAME_PATTERN, args.name):
        print("smartpole receiver add-user: NAME: letters, digits, . _ @ - (at most 64)", file=sys.stderr)
        return EXIT_CONFIG
    password = args.password
    if password is None:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            print("smartpole receiver add-user: the two passwords differ", file=sys.stderr)
            return EXIT_CONFIG
    if len(password) < MIN_PASSWORD:
        print(f"smartpole receiver add-user: use at least {MIN_PASSWORD} characters", file=sys.stderr)
        return EXIT_CONFIG
    created = uvloop.run(service.add_user(config, args.name, args.role, password))
    print(f"user {args.name} ({args.role}) {'created' if created else 'updated, and logged out everywhere'}")
    return 0


def _supervise_workers(config_file: str, workers: int, port: int, shutdown_timeout_s: float) -> int:
    import uvloop

    from smartpole.workers import Supervisor

    if port == 0:
        print("smartpole receiver: --workers needs a fixed receiver.port (0 would give each its own)", file=sys.stderr)
        return EXIT_CONFIG

    def command(k: int) -> list[str]:
        return [sys.executable, "-m", "smartpole.cli", "receiver", "--config", config_file, "--worker", str(k)]

    return uvloop.run(Supervisor(command, workers, shutdown_timeout_s).run())


def format_tokens(tokens: list[Any]) -> str:
    """``list-tokens``: one line per token, never its secret (which is not stored)."""

    def when(ts: float | None) -> str:
        return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"

    rows = [("ID", "ROLE", "POLE/NAME", "CREATED", "LAST USED", "STATE")]
    for t in tokens:
        state = "active" if t.revoked_at is None else f"revoked {when(t.revoked_at)}"
        rows.append((t.token_id, t.role, t.pole_id or t.name or "-", when(t.created_at), when(t.last_used_at), state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_demo(args: argparse.Namespace) -> int:
    from smartpole.demo import run_demo

    return run_demo(Path(args.workdir), duration=args.duration)


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from httpkit.passwords import hash_password

    password = getpass.getpass("Technician password: ") if args.password is None else args.password
    if len(password) < 8:
        print("smartpole hash-password: use at least 8 characters", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_password(password))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from gateway.replay import replay_main

    return replay_main(Path(args.input), Path(args.out), Path(args.config) if args.config else None, args.clips)


def cmd_sensors_decode(args: argparse.Namespace) -> int:
    from gateway.sensing.tools import decode_main

    return decode_main(args.kind, args.file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartpole",
        description="SmartPole: the street-pole gateway daemon, its cloud receiver and tools for technicians.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the pole daemon",
        description="Run the pole daemon: cameras and vision, serial sensors, the outbox, sync, and the local "
        "server (ingest API, status page, metrics). SIGTERM or Ctrl-C stops it cleanly; SIGHUP reloads the config.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="pole configuration (TOML); default: pole.toml in $CONFIGURATION_DIRECTORY, else /etc/smartpole",
    )
    p.set_defaults(func=cmd_run)

    # --config may come before or after the action; the action's copy only overrides when given.
    receiver_config = argparse.ArgumentParser(add_help=False)
    receiver_config.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="FILE", help="receiver configuration (TOML); required"
    )
    p = sub.add_parser(
        "receiver",
        parents=[receiver_config],
        help="run the cloud receiver, or manage its poles, readers and admins",
        description="Without an action: serve the receiver (stops cleanly on SIGTERM). "
        "With an action: manage tokens (pole, reader, admin), or maintain the database. Tokens are printed once "
        "and stored only as sha256 hashes.",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        choices=range(1, 65),
        metavar="N",
        help="serve with N processes on one port (SO_REUSEPORT), restarted when they die (default: 1)",
    )
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    p.set_defaults(func=cmd_receiver)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    a = actions.add_parser("add-pole", parents=[receiver_config], help="register a pole and print a new token for it")
    a.add_argument("pole_id", metavar="POLE_ID")
    a.add_argument(
        "--mosquitto",
        action="store_true",
        help="also print the Mosquitto password_file line for the pole (MQTT uplink; the token is its password)",
    )
    a = actions.add_parser(
        "revoke-pole", parents=[receiver_config], help="revoke every token of a pole (exit 1 if it had none)"
    )
    a.add_argument("pole_id", metavar="POLE_ID")
    a = actions.add_parser(
        "add-reader", parents=[receiver_config], help="print a new read-only token for dashboards and analytics"
    )
    a.add_argument("name", metavar="NAME")
    a = actions.add_parser(
        "add-admin",
        parents=[receiver_config],
        help="print a new admin token: reads all, registers, revokes and configures poles",
    )
    a.add_argument("name", metavar="NAME")
    a = actions.add_parser(
        "add-user",
        parents=[receiver_config],
        help="create a dashboard user (or change its role and password), who logs in at / with a password",
    )
    a.add_argument("name", metavar="NAME")
    a.add_argument(
        "--role", choices=["reader", "admin"], required=True, help="reader: sees everything; admin: also changes"
    )
    a.add_argument("--password", default=None, help="the password (default: ask twice without echo)")
    actions.add_parser(
        "list-tokens",
        parents=[receiver_config],
        help="list every token: id, role, pole or name, created, last used, revoked (never the secret)",
    )
    a = actions.add_parser(
        "revoke-token",
        parents=[receiver_config],
        help="revoke one token of any role by its id or an unambiguous prefix of it (exit 1 if none or several match)",
    )
    a.add_argument("token_id", metavar="ID_OR_PREFIX")
    actions.add_parser(
        "maintain",
        parents=[receiver_config],
        help="create event partitions ahead, delete expired events and their media ([retention]); print a JSON "
        "summary (for a cron job; receivers also do it every retention.maintenance_interval_s)",
    )

    p = sub.add_parser(
        "demo",
        help="run the product on this machine with embedded defaults",
        description="Run the embedded demo on localhost with its files under --workdir. "
        "Stops on Ctrl-C or after --duration seconds.",
    )
    p.add_argument(
        "--workdir", default="var/demo", metavar="DIR", help="where the demo keeps its files (default: %(default)s)"
    )
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: run until Ctrl-C)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "replay",
        help="run the vision pipeline over a video or a folder of images",
        description="Run the pole's vision pipeline over INPUT (a video file, or a folder of images processed "
        "one by one in name order) and write DIR/events.jsonl (each event as the pole would commit it, plus "
        "'source' and 'snapshot') and the redacted JPEGs under DIR/snapshots/. Exit status 0 when done, 1 when "
        "some images could not be decoded, 2 for a missing or corrupt input, a bad config or a missing model.",
    )
    p.add_argument("input", metavar="INPUT", help="video file or folder of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--config", metavar="FILE", help="pole configuration whose [vision] and [privacy] to use")
    p.add_argument(
        "--clips",
        action="store_true",
        help="also cut the whole video into redacted clips ([vision.clips] settings, back to back, pre_s + post_s "
        "long) under DIR/clips/, each a 'clip' event with a 'clip' key",
    )
    p.set_defaults(func=cmd_replay)

    from gateway.sensing.tools import KINDS

    p = sub.add_parser(
        "sensors", help="tools for serial sensors", description="Tools for technicians working on serial sensors."
    )
    sensor_actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = sensor_actions.add_parser(
        "decode",
        help="decode a raw capture of a sensor's serial bytes",
        description="Run a raw capture of serial bytes through the daemon's own parser. Prints one JSON object "
        'per frame, sentence or line, then {"readings": N, "errors": {...}}. Exit status 0 when something '
        "decoded, 1 when nothing did, 2 for an unknown KIND or unreadable FILE.",
    )
    a.add_argument("kind", metavar="KIND", choices=KINDS, help=f"one of: {', '.join(KINDS)}")
    a.add_argument("file", metavar="FILE", help="the capture; - for standard input")
    a.set_defaults(func=cmd_sensors_decode)

    p = sub.add_parser(
        "hash-password",
        help="print the hash of a status-page password, for http.password_hash",
        description="Print an scrypt hash of the technicians' status-page password, to put in the pole "
        "config as http.password_hash (or SMARTPOLE_HTTP_PASSWORD_HASH). Asks for the password unless given.",
    )
    p.add_argument("--password", default=None, help="the password (default: ask without echo)")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a pole or receiver configuration file. Prints 'ok', or every problem as "
        "'FILE: dotted.key: why' and exits with status 2. With --effective, prints a pole's effective "
        "configuration instead.",
    )
    p.add_argument("file", metavar="FILE", help="the TOML file")
    p.add_argument(
        "--effective",
        action="store_true",
        help="pole files: print the effective configuration (JSON, secrets masked): the file with the remote "
        "overlay persisted in its state directory (or --overlay) applied",
    )
    p.add_argument(
        "--overlay",
        metavar="OVERLAY",
        help="with --effective: a remote-config.json, or an overlay as sent to the receiver (JSON or .toml)",
    )
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
