# Persistent meter state (sequence number, cumulative counters).
#
# Interface: Journal(path).load() -> dict or None; .save(dict).
# This first version writes a temporary file and renames it over the old
# one; the two-slot CRC journal that survives torn writes replaces it.

import json
import os


class Journal:
    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with open(self.path) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def save(self, state):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(state))
        os.rename(tmp, self.path)
