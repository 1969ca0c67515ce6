# Flash ring buffer for readings not yet acknowledged by the broker.
#
# Records are JSON lines appended to segment files <dir>/<n>.log (n grows forever); a segment
# is closed after `segment` records. What has been consumed (sent and acknowledged, or dropped)
# is appended as one byte per record to <n>.ack, so its size is the consumed count: flash only
# ever sees appends, never rewrites, and a segment's two files are deleted once fully consumed.
# Every record dropped for capacity appends one byte to <dir>/dropped (its size is the counter).
# A torn append (power loss) leaves a line without "\n": it is never read, and appends move on
# to a new segment.
import os

from roost.util import exists


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _append(path, data):
    with open(path, "ab") as f:
        f.write(data)


class Ring:
    def __init__(self, path="ring", capacity=2000, segment=64, drop_oldest=True):
        self.path = path
        self.capacity = capacity
        self.segment = segment
        self.drop_oldest = drop_oldest
        if not exists(path):
            os.mkdir(path)
        segs = []
        for name in os.listdir(path):
            if name.endswith(".log"):
                segs.append(int(name[:-4]))
        segs.sort()
        self._segs = []  # [n, records, consumed]
        self.count = 0
        self._closed = False  # True: the newest segment must not be appended to
        for n in segs:
            recs, torn = self._scan(n)
            used = min(_size(self._name(n, ".ack")), recs)
            if used >= recs and recs >= segment:
                self._remove(n)
                continue
            self._segs.append([n, recs, used])
            self.count += recs - used
            self._closed = torn
        self.dropped = _size(path + "/dropped")

    def _name(self, n, ext):
        return "%s/%d%s" % (self.path, n, ext)

    def _scan(self, n):
        recs = 0
        last = 10
        buf = bytearray(256)
        with open(self._name(n, ".log"), "rb") as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                mv = memoryview(buf)[:k]
                recs += bytes(mv).count(b"\n")
                last = buf[k - 1]
        return recs, last != 10

    def _remove(self, n):
        for ext in (".log", ".ack"):
            try:
                os.remove(self._name(n, ext))
            except OSError:
                pass

    def append(self, record):
        """Store one record (bytes or str, no newline). Returns False if it was refused."""
        if self.count >= self.capacity:
            self.dropped += 1
            _append(self.path + "/dropped", b"d")
            if not self.drop_oldest:
                return False
            self._consume(1)
        segs = self._segs
        if not segs or self._closed or segs[-1][1] >= self.segment:
            segs.append([segs[-1][0] + 1 if segs else 0, 0, 0])
            self._closed = False
        s = segs[-1]
        with open(self._name(s[0], ".log"), "ab") as f:
            f.write(record)
            f.write(b"\n")
        s[1] += 1
        self.count += 1
        return True

    def peek(self, max_records=20, max_bytes=1024):
        """The oldest unconsumed records (bytes, in order), at most one segment's worth."""
        out = []
        if not self.count:
            return out
        n, recs, used = self._segs[0]
        size = 0
        with open(self._name(n, ".log"), "rb") as f:
            for _ in range(used):
                f.readline()
            for _ in range(recs - used):
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                size += len(line)
                if out and (len(out) >= max_records or size > max_bytes):
                    break
                out.append(line[:-1])
        return out

    def ack(self, k):
        """Mark the k oldest records as delivered."""
        self._consume(k)

    def _consume(self, k):
        while k and self._segs:
            s = self._segs[0]
            take = min(k, s[1] - s[2])
            if take:
                _append(self._name(s[0], ".ack"), b"a" * take)
                s[2] += take
                self.count -= take
                k -= take
            if s[2] >= s[1] and (len(self._segs) > 1 or s[1] >= self.segment or self._closed):
                self._remove(s[0])
                self._segs.pop(0)
                if not self._segs:
                    self._closed = False
            elif not take:
                break

    def clear(self):
        for s in self._segs:
            self._remove(s[0])
        self._segs = []
        self.count = 0
