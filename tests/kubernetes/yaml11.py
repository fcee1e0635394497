"""Reads YAML streams as a YAML 1.1 reader does, for the inject campaign.

PyYAML's SafeLoader (YAML 1.1: yes/no/on/off booleans, 0644 octal, 1_000,
sexagesimal 1:20, timestamps, the merge key) plus the implicit types that
go-yaml v2, kubectl's reader, adds: y/Y/n/N booleans, floats without a
dot (1e3), and Go's 0o17 octal. One JSON-encoded stream per input line; one JSON line out per
stream, {"docs": [...]} or {"error": "..."}. Values JSON cannot hold, and
keys that are not strings, come out as tagged objects, which never equal
what a manifest held.
"""
import datetime
import json
import math
import re
import sys

import yaml


class Loader(yaml.SafeLoader):
    bool_values = dict(yaml.SafeLoader.bool_values, y=True, n=False)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
)
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?0[oO][0-7_]+$"), list("-+0")
)
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def plain(value):
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else "!key " + repr(k)): plain(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return {"!timestamp": str(value)}
    if isinstance(value, bytes):
        return {"!binary": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"!float": repr(value)}
    return value


for line in sys.stdin:
    try:
        docs = [plain(d) for d in yaml.load_all(json.loads(line), Loader=Loader)]
        print(json.dumps({"docs": docs}))
    except Exception as e:  # any failure to read is the answer
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.stdout.flush()
