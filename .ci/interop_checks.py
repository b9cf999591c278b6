#!/usr/bin/env python3
"""Assertions on grpcurl output for .ci/interop.sh (stdlib only).

Each subcommand reads grpcurl's JSON output from a file, prints what it found,
and exits non-zero with a reason when the expectation does not hold.

grpcurl (protojson) quirks handled here:
- 64-bit integers are printed as strings ("1000098765"); the example files
  write them as numbers. Numbers are compared as numbers.
- Without -emit-defaults, proto3 fields at their zero value are left out, so a
  missing `offset` means 0. Fields with presence (`optional`) are printed
  when set, even at zero.
- A server stream is printed as a sequence of JSON objects, not an array.
- grpcurl 1.8.6 prints the proto field names (`event_id`, `pick_confirmed`),
  not protojson's lowerCamelCase (`eventId`) that it accepts as input and that
  the example files use. Output keys are turned into lowerCamelCase before
  comparing (except inside map and Struct values, whose keys are data).
"""

import json
import sys
from datetime import datetime


def fail(msg):
    print(msg)
    sys.exit(1)


# Fields whose JSON object keys are data (map<string, string>, Struct), not
# field names.
DATA_KEYS = {"attributes", "data"}


def camel(name):
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def camelize(v):
    """lowerCamelCase field names, as protojson writes them."""
    if isinstance(v, list):
        return [camelize(x) for x in v]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            k = camel(k)
            out[k] = x if k in DATA_KEYS else camelize(x)
        return out
    return v


def load_one(path):
    text = open(path, encoding="utf-8").read()
    try:
        return camelize(json.loads(text))
    except ValueError as e:
        fail(f"{path}: not one JSON object ({e}):\n{text}")


def load_stream(path):
    """All JSON objects grpcurl printed for a server stream, in order."""
    text = open(path, encoding="utf-8").read()
    dec = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        try:
            obj, i = dec.raw_decode(text, i)
        except ValueError as e:
            fail(f"{path}: bad JSON at char {i} ({e}):\n{text}")
        out.append(camelize(obj))


def as_number(v):
    """A JSON number, or a protojson int64/uint64 string, as a number."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return None
    return None


def diff(want, got, path="$"):
    """Differences between two JSON values; numbers compared as numbers."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in got:
                out.append(f"{path}.{k}: missing (want {want[k]!r})")
            elif k not in want:
                out.append(f"{path}.{k}: unexpected {got[k]!r}")
            else:
                out += diff(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: {len(got)} items, want {len(want)}"]
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            out += diff(w, g, f"{path}[{i}]")
        return out
    if isinstance(want, str) and isinstance(got, str):
        return [] if want == got else [f"{path}: {got!r}, want {want!r}"]
    wn, gn = as_number(want), as_number(got)
    if wn is not None and gn is not None and (
        isinstance(want, (int, float)) or isinstance(got, (int, float))
    ):
        return [] if wn == gn else [f"{path}: {got!r}, want {want!r}"]
    return [] if want == got else [f"{path}: {got!r}, want {want!r}"]


def same_instant(a, b):
    def parse(s):
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return parse(a) == parse(b)
    except ValueError:
        return False


def check_event(event, example_path):
    """`event` (as grpcurl printed it) equals the example file's event."""
    want = load_one(example_path)["event"]
    problems = []
    if event.get("id") != want["id"]:
        problems.append(f"event.id: {event.get('id')!r}, want {want['id']!r}")
    if "occurredAt" in want and not same_instant(
        event.get("occurredAt"), want["occurredAt"]
    ):
        problems.append(
            f"event.occurredAt: {event.get('occurredAt')!r}, want {want['occurredAt']!r}"
        )
    payload = [k for k in want if k not in ("id", "occurredAt", "orderingKey", "attributes")]
    for k in payload:
        if k not in event:
            problems.append(f"event.{k}: missing; event has keys {sorted(event)}")
        else:
            problems += diff(want[k], event[k], f"event.{k}")
    return problems


def cmd_health(path):
    got = load_one(path)
    print(json.dumps(got))
    if got.get("status") != "SERVING":
        fail(f"status {got.get('status')!r}, want 'SERVING'")


def cmd_publish(path, event_id, duplicate, offset=None):
    """A PublishResponse printed with -emit-defaults."""
    got = load_one(path)
    print(json.dumps(got))
    if "offset" not in got or as_number(got["offset"]) is None:
        fail("no numeric `offset` in the response")
    if got.get("eventId") != event_id:
        fail(f"eventId {got.get('eventId')!r}, want {event_id!r}")
    want_dup = duplicate == "true"
    if bool(got.get("duplicate", False)) != want_dup:
        fail(f"duplicate {got.get('duplicate')!r}, want {want_dup}")
    if offset is not None and as_number(got["offset"]) != as_number(offset):
        fail(f"offset {got['offset']!r}, want the first publish's {offset!r}")


def cmd_offset(path):
    """Prints the offset of a PublishResponse (for the shell)."""
    got = load_one(path)
    print(as_number(got.get("offset", 0)))


def cmd_subscribe(path, example_path, event_type):
    msgs = load_stream(path)
    print(f"{len(msgs)} message(s) streamed")
    if not msgs:
        fail("the stream printed no message")
    first = msgs[0]
    problems = []
    if first.get("eventType") != event_type:
        problems.append(f"eventType {first.get('eventType')!r}, want {event_type!r}")
    if "event" not in first:
        problems.append(f"no `event` in the first message: {first}")
    else:
        problems += check_event(first["event"], example_path)
    if problems:
        print(json.dumps(first, indent=2))
        fail("\n".join(problems))


def cmd_get_event(path, example_path, event_type, offset):
    got = load_one(path)
    problems = []
    if as_number(got.get("offset", 0)) != as_number(offset):
        problems.append(f"offset {got.get('offset')!r}, want {offset!r}")
    if got.get("eventType") != event_type:
        problems.append(f"eventType {got.get('eventType')!r}, want {event_type!r}")
    if "event" not in got:
        problems.append("no `event` in the response")
    else:
        problems += check_event(got["event"], example_path)
    if problems:
        print(json.dumps(got, indent=2))
        fail("\n".join(problems))
    print(f"offset {offset}: event {got['event'].get('id')}")


COMMANDS = {
    "health": cmd_health,  # FILE
    "publish": cmd_publish,  # FILE EVENT_ID true|false [OFFSET]
    "offset": cmd_offset,  # FILE
    "subscribe": cmd_subscribe,  # FILE EXAMPLE EVENT_TYPE
    "get-event": cmd_get_event,  # FILE EXAMPLE EVENT_TYPE OFFSET
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(f"usage: {sys.argv[0]} {'|'.join(COMMANDS)} ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
