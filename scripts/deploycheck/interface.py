"""The agent's interface as the binary states it (`ghostwire-backup reference --json`)."""

import json


class Interface:
    """Commands with their flags and environment variables, and the exported metrics."""

    def __init__(self, reference):
        self.reference = reference
        global_flags = reference["global"]
        self.env_only = {e["name"] for e in reference.get("environment", [])}
        # command -> {"--flag": flag}, global flags included (every command takes them).
        self.flags = {
            c["name"]: {f["long"]: f for f in global_flags + c["args"]}
            for c in reference["commands"]
        }
        self.commands = set(self.flags)
        self.env = {f["env"] for fs in self.flags.values() for f in fs.values() if f["env"]} | self.env_only
        self.metric_series = {s for m in reference["metrics"] for s in m["series"]}

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f))

    def env_of(self, command):
        """The environment variables `command` reads."""
        return {f["env"] for f in self.flags.get(command, {}).values() if f["env"]} | self.env_only

    def commands_with(self, flag):
        """The commands that take `--flag`."""
        return {c for c, flags in self.flags.items() if flag in flags}

    def default(self, command, flag):
        """The fixed default of `--flag` for `command`, or None."""
        return (self.flags.get(command, {}).get(flag) or {}).get("default")
