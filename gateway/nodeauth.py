"""Node credentials on a system mosquitto (the Pi image): ``roost nodes add <node_id>``.

Each node gets its own MQTT user (its node id) and a random password in mosquitto's password
file. One ACL pattern gives every such user write access only under ``roost/v1/<its id>/`` and
read access to its own commands; the gateway's user (``roost-gateway``) reads everything and sends
commands. The ACL text lives here only: the image's provision.sh writes it with
``python -m gateway.nodeauth write-acl``, and ``roost nodes add`` rewrites it if it was changed.
"""

from __future__ import annotations

import argparse
import base64
import grp
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from gateway.ingest.decode import NODE_ID_PATTERN

__all__ = [
    "ACL_TEXT",
    "DEFAULT_ACL",
    "DEFAULT_PASSWD",
    "GATEWAY_USER",
    "NodeAuthError",
    "add_node",
    "has_user",
    "new_password",
    "password_hash",
    "register",
    "set_password",
    "write_acl",
]

DEFAULT_PASSWD = Path("/etc/mosquitto/roost/passwd")
DEFAULT_ACL = Path("/etc/mosquitto/roost/acl")
GATEWAY_USER = "roost-gateway"

ACL_TEXT = f"""\
# mosquitto ACL of the Roost Pi image. Written by `python -m gateway.nodeauth write-acl`;
# `roost nodes add` restores it when it differs. Edit gateway/nodeauth.py, not this file.

# The gateway: reads every topic (its own roost/v1/# subscription and any topic-mapping rules),
# sends node commands, committed marks and its own status.
user {GATEWAY_USER}
topic read #
topic write roost/v1/+/cmd
topic write roost/v1/+/committed
topic readwrite roost/gateway/#

# Every other user is a node whose user name is its node id (`roost nodes add <node_id>`):
# it publishes only under its own roost/v1/<node_id>/ and reads only its own commands and its
# own status (so `roost flash` can watch for the birth logged in as the node it flashed) and
# its own committed marks (docs/mqtt.md, "End-to-end acknowledgement").
pattern write roost/v1/%u/readings
pattern readwrite roost/v1/%u/status
pattern write roost/v1/%u/cmd/ack
pattern read roost/v1/%u/cmd
pattern read roost/v1/%u/committed
"""

_NODE_ID = re.compile(NODE_ID_PATTERN)


class NodeAuthError(Exception):
    """Something the operator must fix; the message says what."""


def new_password() -> str:
    """A random password of 24 URL-safe characters (144 bits)."""
    return secrets.token_urlsafe(18)


def _own(path: Path, mode: int) -> None:
    """root:mosquitto and ``mode`` when running as root on a system with that group."""
    if os.geteuid() == 0:
        try:
            gid = grp.getgrnam("mosquitto").gr_gid
        except KeyError:
            gid = -1
        if gid >= 0:
            os.chown(path, 0, gid)
    path.chmod(mode)


def write_acl(acl_file: Path = DEFAULT_ACL) -> bool:
    """Write the ACL when it differs; ``True`` when the file changed."""
    if acl_file.is_file() and acl_file.read_text(encoding="utf-8") == ACL_TEXT:
        return False
    acl_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = acl_file.with_name(acl_file.name + ".tmp")
    tmp.write_text(ACL_TEXT, encoding="utf-8")
    _own(tmp, 0o640)
    tmp.replace(acl_file)
    return True


def has_user(passwd_file: Path, user: str) -> bool:
    if not passwd_file.is_file():
        return False
    prefix = f"{user}:"
    return any(
        line.startswith(prefix) for line in passwd_file.read_text(encoding="utf-8").splitlines()
    )


# mosquitto 2's password-file hash: "$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>".
# Hashing here instead of calling mosquitto_passwd keeps the password off every command line
# (ps, /proc/<pid>/cmdline). 101 iterations and a 12-byte salt are mosquitto_passwd's own
# defaults; the passwords are 144 random bits, so a slow hash buys nothing against guessing.
HASH_ITERATIONS = 101
_SALT_BYTES = 12


def password_hash(password: str, *, salt: bytes | None = None,
                  iterations: int = HASH_ITERATIONS) -> str:
    """The ``$7$`` entry mosquitto 2 checks ``password`` against (a new salt unless given)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def set_password(passwd_file: Path, user: str, password: str) -> None:
    """Add or replace ``user`` in mosquitto's password file (root:mosquitto 0640).

    The new file is written next to the old one with its final mode before it replaces it, so
    the hashes are never readable by others, not even for a moment.
    """
    if ":" in user or "\n" in user:
        raise NodeAuthError(f"user name {user!r} cannot go into a mosquitto password file")
    passwd_file.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if passwd_file.is_file():
        prefix = f"{user}:"
        lines = [
            line
            for line in passwd_file.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith(prefix)
        ]
    lines.append(f"{user}:{password_hash(password)}")
    tmp = passwd_file.with_name(passwd_file.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _own(tmp, 0o640)
    tmp.replace(passwd_file)


def reload_mosquitto() -> str:
    """Make a running system mosquitto re-read its password file and ACL; says what it did."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return "systemd is not running: restart mosquitto to apply"
    r = subprocess.run(
        ["systemctl", "try-reload-or-restart", "mosquitto.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise NodeAuthError(f"reloading mosquitto failed: {(r.stderr or r.stdout).strip()}")
    return "mosquitto reloaded"


def add_node(
    node_id: str,
    *,
    passwd_file: Path = DEFAULT_PASSWD,
    acl_file: Path = DEFAULT_ACL,
    rotate: bool = False,
) -> str:
    """Create (or with ``rotate`` replace) the node's credentials; returns the new password."""
    if not _NODE_ID.fullmatch(node_id):
        raise NodeAuthError(
            f"node id {node_id!r} is not valid: letters, digits, '_', '.', '-', at most 64, "
            "starting with a letter or digit"
        )
    if node_id == GATEWAY_USER:
        raise NodeAuthError(f"{GATEWAY_USER!r} is the gateway's own user: pick another node id")
    if has_user(passwd_file, node_id) and not rotate:
        raise NodeAuthError(
            f"node {node_id!r} already has a password: --rotate replaces it "
            "(the node then needs the new one)"
        )
    password = new_password()
    set_password(passwd_file, node_id, password)
    write_acl(acl_file)
    return password


# -- command line ---------------------------------------------------------------------------


@click.command("add")
@click.argument("node_id")
@click.option("--rotate", is_flag=True, help="Replace the password of a node that has one.")
@click.option(
    "--passwd-file",
    type=click.Path(path_type=Path),
    default=DEFAULT_PASSWD,
    show_default=True,
    help="mosquitto's password file.",
)
@click.option(
    "--acl-file",
    type=click.Path(path_type=Path),
    default=DEFAULT_ACL,
    show_default=True,
    help="mosquitto's ACL file.",
)
@click.option("--no-reload", is_flag=True, help="Do not reload mosquitto.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def add_command(
    node_id: str,
    rotate: bool,
    passwd_file: Path,
    acl_file: Path,
    no_reload: bool,
    as_json: bool,
) -> None:
    """Create MQTT credentials for a node on this machine's mosquitto (the Pi image)."""
    try:
        password = add_node(node_id, passwd_file=passwd_file, acl_file=acl_file, rotate=rotate)
        action = "not reloaded (--no-reload)" if no_reload else reload_mosquitto()
    except NodeAuthError as exc:
        click.echo(f"roost: {exc}", err=True)
        sys.exit(1)
    except PermissionError as exc:
        click.echo(f"roost: {exc}: run as root (sudo roost nodes add {node_id})", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"node_id": node_id, "user": node_id, "password": password}))
        return
    click.echo(f"node {node_id}: MQTT user {node_id!r}, password {password!r} ({action})")
    snippet = json.dumps({"node_id": node_id, "mqtt": {"user": node_id, "password": password}})
    click.echo(f"In the node's config.json: {snippet[1:-1]}")


class NodesGroup(click.Group):
    """``roost nodes`` lists nodes; ``roost nodes add`` creates credentials."""

    def __init__(self, **kw: Any) -> None:
        listing = kw.pop("callback")

        def callback(**params: Any) -> None:
            if click.get_current_context().invoked_subcommand is None:
                listing(**params)

        super().__init__(callback=callback, invoke_without_command=True, **kw)


def register(main: click.Group) -> None:
    """Turn the existing ``roost nodes`` listing into a group with an ``add`` subcommand."""
    listing = main.commands["nodes"]
    group = NodesGroup(
        name="nodes", callback=listing.callback, params=listing.params, help=listing.help
    )
    group.add_command(add_command)
    main.add_command(group)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.nodeauth")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-acl", help="write the mosquitto ACL")
    w.add_argument("--acl-file", type=Path, default=DEFAULT_ACL)
    args = parser.parse_args(argv)
    changed = write_acl(args.acl_file)
    print(f"{args.acl_file}: {'written' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
