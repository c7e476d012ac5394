"""``orbit serve`` and ``orbit token create|list|revoke``: the HTTP API and who may call it."""

from __future__ import annotations

import argparse
import getpass
import socket

from app import access
from app.cli.common import Command, UsageError, in_transaction, print_json, print_table


def _by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cmd_token(args: argparse.Namespace) -> int:
    try:
        if args.action == "create":
            if not args.name:
                raise UsageError("orbit token create NAME --role viewer|operator|admin")
            role = str(access.Role.parse(args.role))
            secret = in_transaction(lambda conn: access.create(conn, args.name, role, _by()))
            print(f"Token {args.name} ({role}) created. Its secret, shown only now:")
            print(secret)
        elif args.action == "revoke":
            if not args.name:
                raise UsageError("orbit token revoke NAME")
            in_transaction(lambda conn: access.revoke(conn, args.name))
            print(f"Token {args.name} revoked; its console sessions ended.")
        else:
            records = in_transaction(access.listed)
            if args.json:
                print_json(records)
            elif not records:
                print("No tokens: orbit serve answers without authentication, on loopback only.")
            else:
                print_table(records, ["name", "role", "created_at", "created_by", "last_used_at", "sessions"])
    except access.AccessError as exc:
        raise UsageError(str(exc)) from None
    return 0


def add_commands(command: Command) -> None:
    from app.serve import command as serve_command

    sub = command("serve", serve_command.start, "serve the HTTP API and the console")
    serve_command.add_arguments(sub)
    sub = command("token", cmd_token, "create, list or revoke API tokens of orbit serve")
    sub.add_argument("action", choices=["create", "list", "revoke"])
    sub.add_argument("name", nargs="?", metavar="NAME")
    sub.add_argument("--role", default="viewer", help="viewer, operator or admin (default viewer)")
    sub.add_argument("--json", action="store_true")
