"""``roost flash`` carries the node's broker credentials from ``roost nodes add`` into the
board's config.json (the keys the firmware reads: mqtt.user, mqtt.password)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.flash import FlashError, node_config, read_credentials
from gateway.nodeauth import password_hash
from gateway.virtual.board import VirtualBoard
from tests.hil.rig import REPO
from tests.image.test_nodeauth import auth_broker, needs_mosquitto


def test_config_carries_the_credentials() -> None:
    cfg = node_config("n-1", mqtt_user="n-1", mqtt_password="pw",
                      extra={"mqtt": {"keepalive_s": 9}})
    assert cfg["mqtt"] == {"keepalive_s": 9, "user": "n-1", "password": "pw"}
    with pytest.raises(FlashError, match="go together"):
        node_config("n-1", mqtt_user="n-1")
    with pytest.raises(FlashError, match="go together"):
        node_config("n-1", mqtt_password="pw")


def test_credentials_are_checked() -> None:
    good = json.dumps({"node_id": "n-1", "user": "n-1", "password": "pw"})
    assert read_credentials(good, "n-1", "f") == ("n-1", "pw")
    with pytest.raises(FlashError, match="not 'n-2'"):
        read_credentials(good, "n-2", "f")
    with pytest.raises(FlashError, match="not JSON"):
        read_credentials("node n-1: MQTT user 'n-1', password 'pw'", "n-1", "f")
    with pytest.raises(FlashError, match="needs node_id, user and password"):
        read_credentials(json.dumps({"node_id": "n-1", "user": "n-1"}), "n-1", "f")


def roost(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin,
                          capture_output=True, text=True, timeout=180, cwd=REPO)


@pytest.mark.integration
def test_nodes_add_json_piped_into_flash(vboard: VirtualBoard, tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    add = roost("nodes", "add", "vb-1", "--json", "--no-reload", "--passwd-file", str(passwd),
                "--acl-file", str(acl))
    assert add.returncode == 0, add.stderr
    creds = json.loads(add.stdout)
    run = roost("flash", "--board", "pico_w", "--port", vboard.port, "--node-id", "vb-1",
                "--gateway", "10.42.0.1", "--credentials", "-", "--no-wait", "--source",
                stdin=add.stdout)
    assert run.returncode == 0, run.stderr
    cfg = json.loads((vboard.fs / "config.json").read_text())
    assert cfg["mqtt"] == {"user": "vb-1", "password": creds["password"]}
    assert cfg["gateway"] == {"host": "10.42.0.1"} and cfg["node_id"] == "vb-1"
    # The password on the board is the one whose hash mosquitto's password file holds.
    (entry,) = (ln.split(":", 1)[1] for ln in passwd.read_text().splitlines()
                if ln.startswith("vb-1:"))
    _, _, iterations, salt, _ = entry.split("$")
    assert password_hash(cfg["mqtt"]["password"], salt=base64.b64decode(salt),
                         iterations=int(iterations)) == entry
    # Another node's credentials are refused before anything is written.
    other = roost("flash", "--board", "pico_w", "--port", vboard.port, "--node-id", "vb-2",
                  "--credentials", "-", "--no-wait", stdin=add.stdout)
    assert other.returncode == 2 and "not 'vb-2'" in other.stderr


@needs_mosquitto
@pytest.mark.integration
def test_flash_waits_for_the_birth_on_a_broker_that_refuses_anonymous_clients(
    vboard: VirtualBoard, tmp_path: Path
) -> None:
    """The Pi image's broker: no anonymous clients, the image's ACL. ``roost flash`` watches for
    the birth logged in as the node (the ACL lets a node read its own status topic)."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    add = roost("nodes", "add", "vb-3", "--json", "--no-reload", "--passwd-file", str(passwd),
                "--acl-file", str(acl))
    assert add.returncode == 0, add.stderr
    with auth_broker(tmp_path, passwd, acl) as (port, _proc):
        flash_args = ("flash", "--board", "pico_w", "--port", vboard.port, "--node-id", "vb-3",
                      "--gateway", "127.0.0.1", "--mqtt-port", str(port), "--source",
                      "--timeout", "60")
        # Without credentials the watcher is anonymous: refused before anything is written.
        anon = roost(*flash_args)
        assert anon.returncode == 1 and "needs the node's credentials: --credentials" in anon.stderr
        run = roost(*flash_args, "--credentials", "-", stdin=add.stdout)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "vb-3 is online" in run.stdout + run.stderr
