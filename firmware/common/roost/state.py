# Persistent node state in state.json: the boot counter, the consecutive-crash counter of the
# boot-loop guard, and settings changed by commands. Written a few times per boot, never per
# reading.
from roost.util import read_json, write_json

PATH = "state.json"


class State:
    def __init__(self, path=PATH):
        self.path = path
        self.data = read_json(path, None) or {}
        self.data.setdefault("boot", 0)
        self.data.setdefault("crash", 0)

    def start_boot(self):
        """Count this boot and assume it will crash until mark_healthy() says otherwise."""
        d = self.data
        d["boot"] += 1
        d["crash"] += 1
        self.save()
        return d["boot"]

    def crashes(self):
        # The current boot is counted too; the crashes before it are the previous boots.
        return self.data["crash"] - 1

    def mark_healthy(self):
        if self.data["crash"]:
            self.data["crash"] = 0
            self.save()

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value):
        if self.data.get(key) != value:
            self.data[key] = value
            self.save()

    def save(self):
        write_json(self.path, self.data)
