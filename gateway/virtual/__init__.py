"""Virtual nodes: the real node firmware running in the MicroPython unix port.

``VirtualNode`` owns one interpreter process per node, gives it a filesystem directory of its own
(``config.json``, the boot counter, the flash ring), puts the host-side fakes of ``machine``,
``network`` and ``dht`` first on its module path, and restarts it the way a board restarts:
after ``machine.reset()``, after a watchdog expiry and after a power cycle. ``roost demo`` runs a
fleet of them; the HIL rig drives them through the firmware's console protocol.
"""

from gateway.virtual.node import (
    EXIT_RESET,
    ConsoleError,
    ResetCause,
    VirtualNode,
    find_micropython,
    firmware_dir,
)

__all__ = [
    "EXIT_RESET",
    "ConsoleError",
    "ResetCause",
    "VirtualNode",
    "find_micropython",
    "firmware_dir",
]
