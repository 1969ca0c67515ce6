# The v1 reading message: {"b":boot,"s":seq,"t":epoch_ms,"u":uptime_ms,"m":{metric:value}}.
# "t" is left out until the node has time from the gateway.
from roost.util import dumps


def encode(boot, seq, t, up, metrics):
    if t is None:
        return '{"b":%d,"s":%d,"u":%d,"m":%s}' % (boot, seq, up, dumps(metrics))
    return '{"b":%d,"s":%d,"t":%d,"u":%d,"m":%s}' % (boot, seq, t, up, dumps(metrics))


def batch(records):
    """Several stored reading lines (bytes) as one JSON array payload."""
    if len(records) == 1:
        return records[0]
    return b"[" + b",".join(records) + b"]"
