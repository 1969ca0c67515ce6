# config.json on the board (written by `roost flash`), merged over these defaults one group deep.
# Errors name the key and the bad value; a missing or unreadable file means "all defaults".
import json

DEFAULTS = {
    "node_id": None,  # None: hex of machine.unique_id()
    "wifi": {"ssid": "", "password": ""},
    "gateway": {"host": "roost.local", "port": 1883},
    "mqtt": {"user": None, "password": None, "keepalive_s": 30},
    "interval_s": 10,
    "sensors": None,  # None: the board's default sensor list
    "ring": {"capacity": 2000, "policy": "drop_oldest", "segment": 64, "batch": 20},
    "status_s": 300,  # re-publish the retained status (mem_free, dropped) this often
    "heartbeat_s": 60,  # event sensors (PIR) publish their state at least this often
    "backoff_max_s": 60,
    "safe_after": 3,  # this many crashes in a row -> safe mode (connect and report only)
    "wdt_ms": 8000,
    "test_mode": False,  # enables the "!roost ..." console protocol
}


class ConfigError(ValueError):
    pass


def _check(cfg, key, kind, lo=None):
    v = cfg[key]
    if not isinstance(v, kind) or (lo is not None and v < lo):
        raise ConfigError("config %s: bad value %r" % (key, v))


def load(path="config.json"):
    cfg = {}
    for k, v in DEFAULTS.items():
        cfg[k] = dict(v) if isinstance(v, dict) else v
    try:
        with open(path) as f:
            user = json.load(f)
    except OSError:
        user = {}
    except ValueError:
        raise ConfigError("config: %s is not valid JSON" % path) from None
    for k, v in user.items():
        if k not in cfg:
            raise ConfigError("config %s: unknown key" % k)
        if isinstance(cfg[k], dict):
            if not isinstance(v, dict):
                raise ConfigError("config %s: bad value %r" % (k, v))
            cfg[k].update(v)
        else:
            cfg[k] = v
    _check(cfg, "interval_s", (int, float), 0.1)
    _check(cfg, "status_s", int, 1)
    _check(cfg, "safe_after", int, 1)
    _check(cfg, "wdt_ms", int, 1000)
    if cfg["ring"]["policy"] not in ("drop_oldest", "drop_newest"):
        raise ConfigError("config ring.policy: bad value %r" % cfg["ring"]["policy"])
    return cfg
