# Virtual board "ROM" for the MicroPython unix port: what a board's own firmware does around the
# user's files, so that mpremote and a serial test rig see a board. Run by the supervisor in
# gateway/virtual/board.py (never copied to a board), one interpreter per boot:
#   - mounts the board's host directory as "/" (nothing outside it is reachable) and sets a
#     board's sys.path ("", ".frozen", "/lib");
#   - runs /boot.py, then /main.py (not after a soft reset into the raw REPL, as on a board);
#   - then the REPLs: friendly (">>> ", echo, Ctrl-A raw, Ctrl-B banner, Ctrl-C, Ctrl-D soft
#     reset) and raw (Ctrl-A, Ctrl-B, Ctrl-C, Ctrl-D execute / soft reset, raw-paste with flow
#     control), byte for byte what mpremote expects from pyexec.c on a board.
# A soft reset ends the process with EXIT_SOFT_*; machine.reset() with 42 (host fake); the
# supervisor starts the next boot and keeps the serial port. Ctrl-C arrives as SIGINT: the
# supervisor sends it only while a program runs, which this file announces in band
# (_MAGIC + b"1"/b"0"), and _MAGIC + b"K" tells it that an interrupt was taken.
# Environment: ROOST_BOARD_FS (the board's directory), ROOST_BOARD_MODE (friendly|raw),
# ROOST_BOARD_NAME (pico_w|esp32), ROOST_BOARD_MACHINE (banner text), ROOST_FLASH_KB.
import gc
import os
import sys

import _vb_micropython

_MAGIC = b"\x1b\x00RB"
EXIT_HARD = 42  # machine.reset() in the host fake
EXIT_SOFT_FRIENDLY = 43
EXIT_SOFT_RAW = 44
FRIENDLY = 0
RAW = 1
_WINDOW = 256  # raw-paste window, as MICROPY_REPL_STDIN_BUFFER_MAX on the rp2 port

_out = sys.stdout.buffer
_in = sys.stdin.buffer
_b1 = bytearray(1)
_intr = False
ns = {"__name__": "__main__"}


def write(b):
    _out.write(b)


def set_intr(on):
    """Tell the supervisor whether a 0x03 from the host interrupts (True) or is data."""
    global _intr
    on = bool(on)
    if on != _intr:
        _intr = on
        write(_MAGIC + (b"1" if on else b"0"))


def _took_interrupt():
    global _intr
    _intr = False
    write(_MAGIC + b"K")


def getc():
    while True:
        try:
            n = _in.readinto(_b1)
        except KeyboardInterrupt:
            # a Ctrl-C that raced with the end of a program lands at the prompt: clear the line
            _took_interrupt()
            return 3
        if n:
            return _b1[0]
        if n == 0:
            raise SystemExit(0)  # the supervisor closed the console: power is gone


# --- the board's filesystem ------------------------------------------------------------------
_host = os.VfsPosix()  # the host's filesystem, unmounted: only BoardFS and the fakes use it


class BoardFS:
    """The board's host directory as a filesystem; "flash full" is a host power
    ({"flash": "full"} in the control file): every write then fails with ENOSPC. Paths are
    normalised here ("..", relative paths) and handed to an unrooted VfsPosix with the board's
    directory in front (VfsPosix's own root prefix breaks rename() in this port)."""

    def __init__(self, root, kb):
        self._root = root.rstrip("/")
        self._cwd = "/"
        self._blocks = kb // 4

    def _norm(self, path):
        if not path.startswith("/"):
            path = self._cwd + "/" + path
        parts = []
        for x in path.split("/"):
            if x == "..":
                if parts:
                    parts.pop()
            elif x and x != ".":
                parts.append(x)
        return "/" + "/".join(parts)

    def _p(self, path):
        return self._root + self._norm(path)

    def _full(self):
        import _hostctl

        return _hostctl.get("flash") == "full"

    def _nospace(self):
        if self._full():
            raise OSError(28)  # ENOSPC

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def ilistdir(self, path):
        # (name, type, inode, size) as littlefs reports it; the unix port leaves out the size
        p = self._p(path)
        for e in _host.ilistdir(p):
            size = 0 if e[1] & 0x4000 else _host.stat(p + "/" + e[0])[6]
            yield (e[0], e[1], e[2], size)

    def chdir(self, path):
        p = self._norm(path)
        if not _host.stat(self._root + p)[0] & 0x4000:
            raise OSError(20)  # ENOTDIR
        self._cwd = p.rstrip("/")

    def getcwd(self):
        return self._cwd or "/"

    def mkdir(self, path):
        self._nospace()
        _host.mkdir(self._p(path))

    def rmdir(self, path):
        _host.rmdir(self._p(path))

    def remove(self, path):
        _host.remove(self._p(path))

    def rename(self, old, new):
        self._nospace()
        _host.rename(self._p(old), self._p(new))

    def stat(self, path):
        return _host.stat(self._p(path))

    def _used(self, p):
        n = 0
        for e in _host.ilistdir(p):
            if e[1] & 0x4000:
                n += 1 + self._used(p + "/" + e[0])
            else:
                n += (_host.stat(p + "/" + e[0])[6] + 4095) // 4096
        return n

    def statvfs(self, path):
        free = 0 if self._full() else max(self._blocks - self._used(self._root), 0)
        return (4096, 4096, self._blocks, free, free, 0, 0, 0, 0, 255)

    def open(self, path, mode="r"):
        for c in "wa+x":
            if c in mode:
                self._nospace()
                return _Bounded(_host.open(self._p(path), mode), self)
        return _host.open(self._p(path), mode)


class _Bounded:
    """A file open for writing on a flash of fixed size: a write that needs more 4 KB blocks
    than the filesystem has free right now (whatever other open files took meanwhile) raises
    OSError(ENOSPC), as littlefs does when it runs out of blocks (extmod/vfs_lfs.c maps
    LFS_ERR_NOSPC to ENOSPC)."""

    def __init__(self, f, fs):
        self._f = f
        self._fs = fs

    def write(self, data):
        f = self._f
        f.flush()  # so the host file's size is what the flash holds of it
        size = f.tell()
        grow = (size + len(data) + 4095) // 4096 - (size + 4095) // 4096
        if grow > self._fs._blocks - self._fs._used(self._fs._root):
            raise OSError(28)  # ENOSPC
        return f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


class _HostOS:
    # the fakes' view of `os`: host paths (control file, events, watchdog file), never the board's
    def stat(self, path):
        return _host.stat(path)

    def getenv(self, key, default=None):
        return os.getenv(key, default)


def _host_open(path, mode="r"):
    return _host.open(path, mode)


def _setup():
    board = os.getenv("ROOST_BOARD_NAME") or "pico_w"
    import _hostctl
    import dht  # noqa: F401
    import machine
    import network  # noqa: F401

    fakes = [_hostctl, machine]
    if board == "esp32":
        import esp32  # noqa: F401
    # the fakes read and write host files (control.json, events.jsonl, the watchdog file)
    for m in fakes:
        m.open = _host_open
    _hostctl.os = _HostOS()
    _vb_micropython._notify = set_intr
    sys.modules["micropython"] = _vb_micropython
    os.umount("/")
    os.mount(BoardFS(os.getenv("ROOST_BOARD_FS"), int(os.getenv("ROOST_FLASH_KB") or 848)), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    gc.collect()


# --- running code ----------------------------------------------------------------------------
def soft_reset(kind):
    write(b"MPY: soft reboot\r\n")
    raise SystemExit(EXIT_SOFT_RAW if kind == RAW else EXIT_SOFT_FRIENDLY)


def execute(src, filename, mode, raw):
    """Compile and run src in __main__'s namespace; in the raw REPL frame the output with
    \\x04 (output, then error output), as pyexec.c does with EXEC_FLAG_PRINT_EOF."""
    err = None
    reset = None
    set_intr(True)
    try:
        try:
            exec(compile(src, filename, mode), ns)
        finally:
            set_intr(False)
    except SystemExit as e:
        code = e.args[0] if e.args else 0
        if code == EXIT_HARD:
            raise  # machine.reset(): the process ends, the supervisor boots the board again
        reset = RAW if raw else FRIENDLY
    except KeyboardInterrupt as e:
        _took_interrupt()
        err = e
    except BaseException as e:  # a REPL prints whatever the program raised
        err = e
    if raw:
        write(b"\x04")
    if err is not None:
        sys.print_exception(err)
    if raw:
        write(b"\x04")
    if reset is not None:
        soft_reset(reset)


def run_file(name):
    try:
        os.stat(name)
    except OSError:
        return
    with open(name) as f:
        src = f.read()
    execute(src, name, "exec", False)


# --- the REPLs -------------------------------------------------------------------------------
def banner():
    v = sys.implementation.version
    machine = os.getenv("ROOST_BOARD_MACHINE") or "virtual board"
    write(
        b"MicroPython v%d.%d.%d on virtual; %s\r\nType \"help()\" for more information.\r\n"
        % (v[0], v[1], v[2], machine.encode())
    )


def readline():
    """One line with echo and backspace; returns (text, 13) or ("", control char)."""
    line = bytearray()
    last = 0
    while True:
        c = getc()
        if c == 10 and last == 13:
            last = 0
            continue
        last = c
        if c in (13, 10):
            write(b"\r\n")
            return str(line, "utf-8"), 13
        if c in (1, 2, 3, 4) and not (c == 4 and line):
            return str(line, "utf-8"), c
        if c in (8, 127):
            if line:
                line.pop()
                write(b"\b \b")
        elif c >= 32 or c == 9:
            line.append(c)
            _b1[0] = c
            write(_b1)


def friendly():
    banner()
    block = []
    while True:
        write(b"... " if block else b">>> ")
        line, c = readline()
        if c == 1:
            write(b"\r\n")
            return RAW
        if c == 2:
            write(b"\r\n")
            return FRIENDLY
        if c == 3:
            write(b"\r\n")
            block = []
            continue
        if c == 4:
            if not block:
                write(b"\r\n")
                soft_reset(FRIENDLY)
            write(b"\r\n")
            line = ""
        if block:
            if line.strip():
                block.append(line)
                continue
            src, block = "\n".join(block) + "\n", []
        elif not line.strip():
            continue
        elif line.rstrip().endswith((":", "\\")):
            block = [line]
            continue
        else:
            src = line
        execute(src, "<stdin>", "single", False)


def paste(cmd):
    if cmd != 0x41:  # 'A'
        write(b"R\x00")
        return
    write(b"R\x01" + bytes((_WINDOW & 0xFF, _WINDOW >> 8)))
    src = bytearray()
    remain = _WINDOW
    while True:
        c = getc()
        if c == 4:
            write(b"\x04")
            break
        if c == 3:
            write(b"\x04\x04KeyboardInterrupt: \r\n\x04")
            return
        src.append(c)
        remain -= 1
        if remain == 0:
            write(b"\x01")  # the host may send another window
            remain = _WINDOW
    execute(str(src, "utf-8"), "<stdin>", "exec", True)


def raw():
    write(b"raw REPL; CTRL-B to exit\r\n")
    while True:
        write(b">")
        line = bytearray()
        while True:
            c = getc()
            if c == 1:
                if len(line) == 2 and line[0] == 5:
                    paste(line[1])
                    line = None
                    break
                return RAW
            if c == 2:
                write(b"\r\n")
                return FRIENDLY
            if c == 3:
                line = bytearray()
            elif c == 4:
                break
            else:
                line.append(c)
        if line is None:
            continue
        write(b"OK")
        if not line:
            write(b"\r\n")
            soft_reset(RAW)
        execute(str(line, "utf-8"), "<stdin>", "exec", True)


def main():
    _setup()
    kind = RAW if os.getenv("ROOST_BOARD_MODE") == "raw" else FRIENDLY
    try:
        run_file("boot.py")
        if kind == FRIENDLY:
            run_file("main.py")
    except KeyboardInterrupt:
        _took_interrupt()
    while True:
        try:
            kind = raw() if kind == RAW else friendly()
        except KeyboardInterrupt:
            _took_interrupt()
            write(b"\r\n")


main()
