#!/usr/bin/env python3
"""Assertions on grpcurl output for .ci/interop.sh.

Each subcommand reads grpcurl's JSON output from a file, prints what it found,
and exits non-zero with a reason when the expectation does not hold. The
webhook subcommands read the JSON-lines log of .ci/webhook_receiver.py.
Everything is stdlib except the `standardwebhooks` package, imported only by
the subcommands that verify signatures (it is in the interop venv).

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

import base64
import hashlib
import json
import re
import sys
import time
import urllib.parse
from datetime import datetime, timedelta, timezone


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


# ---------------------------------------------------------------- webhooks


def write_file(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def json_diff(want, got, path="$"):
    """Differences between two webhook bodies: numbers compared as numbers
    (95.0 == 95), everything else by type and value (no "95" == 95)."""

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in got:
                out.append(f"{path}.{k}: missing (want {want[k]!r})")
            elif k not in want:
                out.append(f"{path}.{k}: unexpected {got[k]!r}")
            else:
                out += json_diff(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: {len(got)} items, want {len(want)}"]
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            out += json_diff(w, g, f"{path}[{i}]")
        return out
    if is_num(want) and is_num(got):
        return [] if want == got else [f"{path}: {got!r}, want {want!r}"]
    if type(want) is not type(got) or want != got:
        return [f"{path}: {got!r}, want {want!r}"]
    return []


def load_log(path):
    """The receiver's records so far (a half-written last line is skipped)."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def summarize(records):
    return "\n".join(
        f"  [{i}] {r['method']} {r['path']} webhook-id={r['headers'].get('webhook-id')!r} "
        f"x-stevedore-event-id={r['headers'].get('x-stevedore-event-id')!r} "
        f"x-jasci-event={r['headers'].get('x-jasci-event')!r} verified={r['verified']} "
        f"({r.get('verify_error')}) body={r['body'][:200]!r}"
        for i, r in enumerate(records)
    ) or "  (none)"


def event_id_of(record):
    """The producer's event id of a logged webhook: X-Stevedore-Event-Id,
    percent-decoded (README "Receiving webhooks")."""
    raw = record["headers"].get("x-stevedore-event-id")
    return None if raw is None else urllib.parse.unquote(raw, errors="strict")


def expected_webhook_id(event_id):
    """The webhook-id the README documents: the event id when it is 1 to 128
    of A-Z a-z 0-9 _ -, else msg_ + the first 32 hex digits of its SHA-256."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,128}", event_id):
        return event_id
    return "msg_" + hashlib.sha256(event_id.encode()).hexdigest()[:32]


def wait_for_ids(log_path, ids, timeout):
    """Polls the log until a POST carries each event id; returns the POSTs."""
    deadline = time.monotonic() + float(timeout)
    while True:
        posts = [r for r in load_log(log_path) if r["method"] == "POST"]
        seen = {event_id_of(r) for r in posts}
        missing = [i for i in ids if i not in seen]
        if not missing:
            return posts
        if time.monotonic() >= deadline:
            fail(
                f"after {timeout} s no webhook with event id {missing}; "
                f"the receiver logged {len(posts)} POST(s):\n{summarize(posts)}"
            )
        time.sleep(0.2)


def check_delivery(record, event_id, event_type, golden_path):
    """Problems with one logged webhook request."""
    h = record["headers"]
    problems = []
    if record["path"] != "/hook":
        problems.append(f"path {record['path']!r}, want '/hook'")
    if h.get("webhook-id") != expected_webhook_id(event_id):
        problems.append(
            f"webhook-id {h.get('webhook-id')!r}, want {expected_webhook_id(event_id)!r}"
        )
    if event_id_of(record) != event_id:
        problems.append(
            f"x-stevedore-event-id {h.get('x-stevedore-event-id')!r} decodes to "
            f"{event_id_of(record)!r}, want {event_id!r}"
        )
    if not h.get("user-agent", "").startswith("stevedore/"):
        problems.append(f"user-agent {h.get('user-agent')!r}, want 'stevedore/<version>'")
    if h.get("x-jasci-event") != event_type:
        problems.append(f"x-jasci-event {h.get('x-jasci-event')!r}, want {event_type!r}")
    if h.get("content-type") != "application/json":
        problems.append(f"content-type {h.get('content-type')!r}, want 'application/json'")
    ts = h.get("webhook-timestamp", "")
    if not ts.isdigit():
        problems.append(f"webhook-timestamp {ts!r} is not unix seconds")
    if not record.get("body_is_utf8", True):
        problems.append("the body is not UTF-8")
    try:
        with open(golden_path, encoding="utf-8") as f:
            want = json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"cannot compare the body: golden file {golden_path}: {e}")
        return problems
    try:
        got = json.loads(record["body"])
    except ValueError as e:
        problems.append(f"the body is not JSON ({e}): {record['body'][:500]!r}")
    else:
        body_problems = json_diff(want, got)
        if body_problems:
            problems.append(f"the body differs from {golden_path}:")
            problems += [f"  {p}" for p in body_problems]
    return problems


def cmd_endpoint_created(path, url, secret_out, id_out):
    """A CreateEndpointResponse: `ep_` id, the url, a `whsec_` secret (saved
    to SECRET_OUT for the receiver, never printed); the id goes to ID_OUT."""
    got = load_one(path)
    endpoint = got.get("endpoint") or {}
    secret = got.get("secret", "")
    shown = {k: v for k, v in got.items() if k != "secret"}
    print(json.dumps(shown))
    problems = []
    if not str(endpoint.get("id", "")).startswith("ep_"):
        problems.append(f"endpoint.id {endpoint.get('id')!r} does not start with 'ep_'")
    if endpoint.get("url") != url:
        problems.append(f"endpoint.url {endpoint.get('url')!r}, want {url!r}")
    if not secret.startswith("whsec_"):
        problems.append(f"secret does not start with 'whsec_' ({len(secret)} chars)")
    else:
        try:
            key = base64.b64decode(secret[len("whsec_"):], validate=True)
        except ValueError as e:
            problems.append(f"secret after 'whsec_' is not standard base64: {e}")
        else:
            if not 24 <= len(key) <= 64:
                problems.append(f"secret key is {len(key)} bytes, want 24 to 64")
    if problems:
        fail("\n".join(problems))
    write_file(secret_out, secret)
    write_file(id_out, endpoint["id"])
    print(f"endpoint {endpoint['id']}, secret saved")


def secret_forms(secret):
    """Ways a secret could leak into JSON: as given, its key in standard or
    URL-safe base64 (as a bytes field would print), or hex."""
    forms = {secret}
    if secret.startswith("whsec_"):
        b64 = secret[len("whsec_"):]
        forms.add(b64)
        forms.add(b64.rstrip("="))
        try:
            key = base64.b64decode(b64)
        except ValueError:
            key = b""
        if key:
            forms.add(base64.urlsafe_b64encode(key).decode().rstrip("="))
            forms.add(key.hex())
    return forms


def cmd_no_secret(path, endpoint_id, *secret_files):
    """The grpcurl output names the endpoint but shows none of the secrets."""
    text = open(path, encoding="utf-8").read()
    if endpoint_id not in text:
        print(text)
        fail(f"endpoint {endpoint_id} is not in the output")
    for sf in secret_files:
        secret = read_text(sf)
        for form in secret_forms(secret):
            if form and form in text:
                fail(f"the output contains the secret from {sf} (as {len(form)} chars)")
    print(f"{len(text)} chars, endpoint {endpoint_id} present, no secret")


def cmd_get_endpoint(path, endpoint_id, url, description, *event_types):
    got = load_one(path)
    e = got.get("endpoint") or {}
    problems = []
    for key, want in (("id", endpoint_id), ("url", url), ("description", description)):
        if e.get(key) != want:
            problems.append(f"endpoint.{key} {e.get(key)!r}, want {want!r}")
    if sorted(e.get("eventTypes", [])) != sorted(event_types):
        problems.append(f"endpoint.eventTypes {e.get('eventTypes')!r}, want {list(event_types)!r}")
    if e.get("enabled", True) is not True:
        problems.append(f"endpoint.enabled {e.get('enabled')!r}, want true")
    if problems:
        print(json.dumps(got, indent=2))
        fail("\n".join(problems))
    print(json.dumps(got))


def cmd_webhooks(log_path, timeout, *specs, signatures=1):
    """SPEC = EVENT_ID:EVENT_TYPE:GOLDEN_FILE. Waits up to TIMEOUT seconds
    for a POST per event; then each event has exactly one POST, verified by
    the receiver, with the right headers, one signature and the golden body."""
    # NUL-separated when an id may hold a colon (odd-webhooks).
    expected = [s.split("\0", 2) if "\0" in s else s.split(":", 2) for s in specs]
    posts = wait_for_ids(log_path, [e[0] for e in expected], timeout)
    problems = []
    for event_id, event_type, golden in expected:
        mine = [r for r in posts if event_id_of(r) == event_id]
        if len(mine) != 1:
            problems.append(f"{event_id}: {len(mine)} POSTs, want exactly 1")
        r = mine[0]
        if r["verified"] is not True:
            problems.append(f"{event_id}: not verified by standardwebhooks: {r.get('verify_error')}")
        sigs = r["headers"].get("webhook-signature", "").split(" ")
        if len(sigs) != signatures or not all(s.startswith("v1,") for s in sigs):
            problems.append(
                f"{event_id}: webhook-signature {sigs!r}, want {signatures} 'v1,' entries"
            )
        problems += [f"{event_id}: {p}" for p in check_delivery(r, event_id, event_type, golden)]
    if problems:
        print(summarize(posts))
        fail("\n".join(problems))
    print(f"{len(expected)} webhooks verified:\n{summarize(posts)}")


def cmd_deliveries(path, endpoint_id, state, *event_ids):
    """A ListDeliveriesResponse (with -emit-defaults) lists exactly these
    events, all in STATE, for the endpoint."""
    got = load_one(path)
    ds = got.get("deliveries", [])
    problems = []
    found = sorted(d.get("eventId", "") for d in ds)
    if found != sorted(event_ids):
        problems.append(f"event ids {found}, want {sorted(event_ids)}")
    for d in ds:
        who = d.get("eventId")
        if d.get("endpointId") != endpoint_id:
            problems.append(f"{who}: endpointId {d.get('endpointId')!r}, want {endpoint_id!r}")
        if d.get("state") != state:
            problems.append(f"{who}: state {d.get('state')!r}, want {state!r}")
        if not as_number(d.get("offset")):
            problems.append(f"{who}: offset {d.get('offset')!r}, want a number > 0")
        if not as_number(d.get("attempts")):
            problems.append(f"{who}: attempts {d.get('attempts')!r}, want >= 1")
        if state == "DELIVERY_STATE_DELIVERED" and as_number(d.get("lastStatus")) != 200:
            problems.append(f"{who}: lastStatus {d.get('lastStatus')!r}, want 200")
    if problems:
        print(json.dumps(got, indent=2))
        fail("\n".join(problems))
    print(json.dumps(got))


def cmd_rotated(path, old_secret_file, grace_seconds, new_secret_out):
    """A RotateEndpointSecretResponse: a new `whsec_` secret (saved to
    NEW_SECRET_OUT) and previousExpiresAt about GRACE_SECONDS from now."""
    got = load_one(path)
    secret = got.get("secret", "")
    print(json.dumps({k: v for k, v in got.items() if k != "secret"}))
    problems = []
    if not secret.startswith("whsec_"):
        problems.append("secret does not start with 'whsec_'")
    if secret == read_text(old_secret_file):
        problems.append("the new secret equals the old one")
    expires = got.get("previousExpiresAt")
    try:
        at = datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
        want = datetime.now(timezone.utc) + timedelta(seconds=int(grace_seconds))
        if abs((at - want).total_seconds()) > 120:
            problems.append(f"previousExpiresAt {expires}, want about {want.isoformat()}")
    except ValueError:
        problems.append(f"previousExpiresAt {expires!r} is not an RFC 3339 time")
    if problems:
        fail("\n".join(problems))
    write_file(new_secret_out, secret)


def cmd_rotation_webhook(log_path, timeout, spec, old_secret_file, new_secret_file):
    """The webhook for SPEC (EVENT_ID:EVENT_TYPE:GOLDEN) sent during a
    rotation: two `v1,` signatures, and standardwebhooks accepts it with the
    old secret and with the new one (each alone), but not with another."""
    from standardwebhooks.webhooks import Webhook

    event_id, event_type, golden = spec.split(":", 2)
    posts = wait_for_ids(log_path, [event_id], timeout)
    mine = [r for r in posts if event_id_of(r) == event_id]
    r = mine[0]
    problems = [f"{event_id}: {p}" for p in check_delivery(r, event_id, event_type, golden)]
    if len(mine) != 1:
        problems.append(f"{event_id}: {len(mine)} POSTs, want exactly 1")
    sigs = r["headers"].get("webhook-signature", "").split(" ")
    if len(sigs) != 2 or not all(s.startswith("v1,") for s in sigs):
        problems.append(f"webhook-signature {sigs!r}, want two space-separated 'v1,' entries")
    headers = dict(r["headers"])
    unrelated = "whsec_" + base64.b64encode(b"not the endpoint's secret, 32 b").decode()
    for name, secret, want in (
        ("old", read_text(old_secret_file), True),
        ("new", read_text(new_secret_file), True),
        ("unrelated", unrelated, False),
    ):
        try:
            Webhook(secret).verify(r["body"], headers)
            ok, why = True, ""
        except Exception as e:  # noqa: BLE001 - any failure is "not verified"
            ok, why = False, f"{type(e).__name__}: {e}"
        print(f"standardwebhooks with the {name} secret: {'verified' if ok else why}")
        if ok != want:
            problems.append(
                f"standardwebhooks with the {name} secret: "
                + ("verified, want rejected" if ok else f"rejected ({why})")
            )
    if r["verified"] is not True:
        problems.append(f"the receiver (new secret) did not verify it: {r.get('verify_error')}")
    if problems:
        print(summarize(mine))
        fail("\n".join(problems))


def cmd_example_with_id(example_path, event_id):
    """Prints the example publish request with another event id."""
    with open(example_path, encoding="utf-8") as f:
        req = json.load(f)
    req["event"]["id"] = event_id
    print(json.dumps(req))


# Event ids that are not header-safe tokens (the ids of #19): a leading
# space, dots, non-ASCII characters, 256 bytes. Indexed from the shell.
ODD_IDS = [
    " lead-space-4",
    "café-5",
    "order.2024.7 v2",
    "x" * 256,
    "é" * 128,
]


def cmd_odd_id(index):
    """Prints ODD_IDS[INDEX] (for the shell)."""
    print(ODD_IDS[int(index)])


def cmd_odd_webhooks(log_path, timeout, event_type, golden):
    """Every ODD_IDS event arrives once, verified by standardwebhooks (with
    the new secret of the rotation in progress: two signatures), with the
    documented webhook-id and X-Stevedore-Event-Id."""
    specs = [f"{i}\0{event_type}\0{golden}" for i in ODD_IDS]
    cmd_webhooks(log_path, timeout, *specs, signatures=2)


COMMANDS = {
    "health": cmd_health,  # FILE
    "publish": cmd_publish,  # FILE EVENT_ID true|false [OFFSET]
    "offset": cmd_offset,  # FILE
    "subscribe": cmd_subscribe,  # FILE EXAMPLE EVENT_TYPE
    "get-event": cmd_get_event,  # FILE EXAMPLE EVENT_TYPE OFFSET
    "endpoint-created": cmd_endpoint_created,  # FILE URL SECRET_OUT ID_OUT
    "no-secret": cmd_no_secret,  # FILE ENDPOINT_ID SECRET_FILE...
    "get-endpoint": cmd_get_endpoint,  # FILE ID URL DESCRIPTION EVENT_TYPE...
    "webhooks": cmd_webhooks,  # LOG TIMEOUT EVENT_ID:EVENT_TYPE:GOLDEN...
    "deliveries": cmd_deliveries,  # FILE ENDPOINT_ID STATE EVENT_ID...
    "rotated": cmd_rotated,  # FILE OLD_SECRET_FILE GRACE_SECONDS NEW_SECRET_OUT
    "rotation-webhook": cmd_rotation_webhook,  # LOG TIMEOUT SPEC OLD_SECRET NEW_SECRET
    "example-with-id": cmd_example_with_id,  # EXAMPLE EVENT_ID
    "odd-id": cmd_odd_id,  # INDEX
    "odd-webhooks": cmd_odd_webhooks,  # LOG TIMEOUT EVENT_TYPE GOLDEN
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(f"usage: {sys.argv[0]} {'|'.join(COMMANDS)} ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
