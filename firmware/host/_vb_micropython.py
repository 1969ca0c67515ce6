# The `micropython` module as a virtual board sees it (vboard.py puts it in sys.modules): the
# unix port's own, except kbd_intr(). On the unix port, kbd_intr(-1) restores SIGINT's default
# action, so with mpremote's mount (binary data on the console) a 0x03 byte would kill the board.
# On a virtual board the supervisor decides what a 0x03 from the host means, so kbd_intr() only
# tells it, in band, whether Ctrl-C interrupts the program or is data.
from micropython import *  # noqa: F403

_notify = None  # set by vboard.py


def kbd_intr(chr):
    if _notify is not None:
        _notify(chr == 3)
