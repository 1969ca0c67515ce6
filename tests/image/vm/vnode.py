"""VM test: the real node firmware (MicroPython unix port, gateway.virtual's supervisor) on the
second radio. Its config.json is what `roost flash --credentials` writes from the JSON that
`roost nodes add --json` printed. Runs inside the "node" network namespace until killed.

    vnode.py CREDENTIALS_JSON NODE_DIR SECONDS
"""

import asyncio
import json
import sys
from pathlib import Path

from gateway.flash import node_config, read_credentials
from gateway.virtual.node import VirtualNode


async def main(creds_file: str, directory: str, seconds: float) -> None:
    creds = Path(creds_file).read_text()
    node_id = json.loads(creds)["node_id"]
    user, password = read_credentials(creds, node_id, creds_file)
    cfg = node_config(
        node_id, wifi_ssid="roost", wifi_password="unused by the unix port", gateway="10.42.0.1",
        mqtt_user=user, mqtt_password=password, interval_s=1,
        extra={"backoff_max_s": 2},
    )
    node = VirtualNode(Path(directory), cfg, micropython="/usr/local/lib/roost-vmtest/micropython")
    await node.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await node.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
