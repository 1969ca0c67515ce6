"""``roost nodes add`` writes mosquitto 2's ``$7$`` hashes itself (no password on a command line):
the same hash as mosquitto_passwd for the same salt, and a real mosquitto accepts the node's
password and refuses a wrong or rotated-out one."""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.nodeauth import (
    GATEWAY_USER,
    NodeAuthError,
    add_node,
    password_hash,
    set_password,
)
from tests.conftest import free_port

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None or shutil.which("mosquitto_pub") is None,
    reason="mosquitto and mosquitto-clients missing (./setup.sh installs them)",
)


@needs_mosquitto
def test_hash_equals_mosquitto_passwd_for_the_same_salt(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    password = "p4ss: wörd with spaces"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(ref), "u", password], check=True)
    entry = ref.read_text().strip().split(":", 1)[1]
    _, kind, iterations, salt, _digest = entry.split("$")
    assert kind == "7"
    assert password_hash(password, salt=base64.b64decode(salt), iterations=int(iterations)) == entry
    assert password_hash("other", salt=base64.b64decode(salt), iterations=int(iterations)) != entry


def test_set_password_needs_no_tool_and_replaces_only_that_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no mosquitto_passwd to fall back on
    passwd = tmp_path / "passwd"
    set_password(passwd, "a", "one")
    set_password(passwd, "b", "two")
    first_b = passwd.read_text().splitlines()[1]
    set_password(passwd, "a", "three")
    lines = passwd.read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["b", "a"] and lines[0] == first_b
    assert passwd.stat().st_mode & 0o777 == 0o640
    assert not (tmp_path / "passwd.tmp").exists()


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on {port}")


def pub(port: int, user: str | None, password: str | None) -> bool:
    """A QoS1 publish under the node's own topic; True when the broker accepted the CONNECT."""
    auth = [] if user is None else ["-u", user, "-P", password or ""]
    r = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *auth,
         "-q", "1", "-t", f"roost/v1/{user}/status", "-m", "{}"],
        capture_output=True, text=True, timeout=20, check=False,
    )
    return r.returncode == 0


@contextlib.contextmanager
def auth_broker(
    tmp_path: Path, passwd: Path, acl: Path
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A real mosquitto on a free loopback port with the image's auth: password file and ACL,
    no anonymous clients. Yields (port, process); stopped on exit."""
    port = free_port()
    conf = tmp_path / "mosquitto-auth.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {acl}\npersistence false\nlog_dest stderr\n"
        # As root mosquitto would switch to user mosquitto, who cannot enter tmp_path.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    with (tmp_path / "mosquitto-auth.log").open("w") as log:
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
        try:
            _wait_port(port)
            yield port, proc
        finally:
            proc.terminate()
            proc.wait(10)


@needs_mosquitto
def test_real_mosquitto_accepts_the_hash_and_refuses_wrong_passwords(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    pw_a = add_node("node-a", passwd_file=passwd, acl_file=acl)
    pw_b = add_node("node-b", passwd_file=passwd, acl_file=acl)
    assert "node-a:$7$101$" in passwd.read_text()
    with auth_broker(tmp_path, passwd, acl) as (port, proc):
        assert pub(port, "node-a", pw_a) and pub(port, "node-b", pw_b)
        # The negative controls: each MUST be refused.
        assert not pub(port, "node-a", pw_b)
        assert not pub(port, "node-a", pw_a + "x")
        assert not pub(port, "node-c", pw_a)
        assert not pub(port, None, None)
        # Rotation: mosquitto re-reads the file on SIGHUP (what `systemctl reload` sends).
        new_a = add_node("node-a", passwd_file=passwd, acl_file=acl, rotate=True)
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not pub(port, "node-a", new_a) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pub(port, "node-a", new_a)
        assert not pub(port, "node-a", pw_a)
        assert pub(port, "node-b", pw_b)


@pytest.mark.parametrize("node_id", ["node-a\n", "node-a\nintruder", "", "a b", "-lead"])
def test_node_ids_outside_the_pattern_are_refused(tmp_path: Path, node_id: str) -> None:
    # A trailing newline passes a `$` anchor under re.match: it would split the passwd line.
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    with pytest.raises(NodeAuthError, match="is not valid"):
        add_node(node_id, passwd_file=passwd, acl_file=acl)
    assert not passwd.exists() and not acl.exists()


def _sub_one(port: int, user: str, password: str, topic: str) -> subprocess.Popen[str]:
    """A subscriber that prints the first message on ``topic`` (or nothing within 5 s)."""
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password,
         "-t", topic, "-C", "1", "-W", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@needs_mosquitto
def test_acl_lets_the_gateway_mark_and_only_the_node_read_its_marks(tmp_path: Path) -> None:
    """Committed marks (docs/mqtt.md, end-to-end acknowledgement) under the image's real ACL: the
    gateway user may publish roost/v1/<node>/committed, that node may read it, another node not,
    and a node may not forge marks for another."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    pw_a = add_node("node-a", passwd_file=passwd, acl_file=acl)
    pw_b = add_node("node-b", passwd_file=passwd, acl_file=acl)
    pw_gw = "gw-" + pw_a[::-1]
    set_password(passwd, GATEWAY_USER, pw_gw)
    with auth_broker(tmp_path, passwd, acl) as (port, _proc):
        mine = _sub_one(port, "node-a", pw_a, "roost/v1/node-a/committed")
        other = _sub_one(port, "node-b", pw_b, "roost/v1/node-a/committed")
        time.sleep(0.5)  # both subscriptions made before the publish (no retained message)

        def mark(user: str, password: str, payload: str) -> None:
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user,
                 "-P", password, "-t", "roost/v1/node-a/committed", "-m", payload],
                check=True, timeout=20,
            )

        mark("node-b", pw_b, '{"b":0,"s":999}')  # a forgery: dropped by the broker's ACL
        mark(GATEWAY_USER, pw_gw, '{"b":7,"s":42}')
        got, _ = mine.communicate(timeout=20)
        leaked, _ = other.communicate(timeout=20)
    assert got.strip() == '{"b":7,"s":42}'
    assert "{" not in leaked, leaked  # mosquitto_sub -W prints only "Timed out"
