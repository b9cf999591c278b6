#!/usr/bin/env python3
"""Checks that every workspace member's `rust-version` is a real minimum.

Reads `cargo metadata --format-version 1` (resolved for the host platform)
and, for each workspace member, walks every package it depends on (its
normal, build and dev dependencies, since its tests build too, and theirs
except their dev-dependencies) and fails when one of them declares a
`rust-version` above the member's, printing each such package. A member
without `rust-version` fails too.

The other half of the check is clippy's `incompatible_msrv` lint (on by
default; clippy reads `rust-version`), which `cargo clippy -- -D warnings`
turns into an error when the code calls std APIs newer than the minimum.

Usage: python3 .ci/msrv.py   (from anywhere in the repository)
"""

import json
import subprocess
import sys


def version_key(v):
    """`1.88` / `1.88.0` as a comparable tuple (missing parts are 0)."""
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def host_triple():
    out = subprocess.run(
        ["rustc", "-vV"], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("host:"):
            return line.split(":", 1)[1].strip()
    sys.exit("msrv: cannot read the host triple from `rustc -vV`")


def main():
    meta = json.loads(
        subprocess.run(
            [
                "cargo",
                "metadata",
                "--format-version",
                "1",
                "--filter-platform",
                host_triple(),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    # Edges per package: (dependency, whether it is only a dev-dependency).
    deps = {
        n["id"]: [
            (d["pkg"], all(k["kind"] == "dev" for k in d["dep_kinds"]))
            for d in n["deps"]
        ]
        for n in meta["resolve"]["nodes"]
    }
    failed = False
    for member in meta["workspace_members"]:
        pkg = packages[member]
        declared = pkg.get("rust_version")
        if not declared:
            print(f"msrv: {pkg['name']} declares no rust-version")
            failed = True
            continue
        # The member's own dev-dependencies count (its tests build); its
        # dependencies' dev-dependencies do not.
        seen, higher = {member}, []
        todo = [pid for pid, _ in deps.get(member, [])]
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo.extend(d for d, dev_only in deps.get(pid, []) if not dev_only)
            dep = packages[pid]
            needs = dep.get("rust_version")
            if needs and version_key(needs) > version_key(declared):
                higher.append((version_key(needs), needs, dep["name"], dep["version"]))
        highest = max((h[1] for h in higher), key=version_key, default=None)
        if higher:
            failed = True
            print(
                f"msrv: {pkg['name']} declares rust-version {declared}, "
                f"but its dependencies need up to {highest}:"
            )
            for _, needs, name, version in sorted(higher, reverse=True):
                print(f"  {name} {version} needs {needs}")
        else:
            print(
                f"msrv: {pkg['name']} rust-version {declared}: "
                f"no dependency ({len(seen) - 1} packages) needs more"
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
