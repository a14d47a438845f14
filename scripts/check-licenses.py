#!/usr/bin/env python3
"""Fails if a dependency has no licence compatible with polybridge's MIT OR Apache-2.0.

A licence expression passes when one of its OR-alternatives is entirely permissive.
Run: python3 scripts/check-licenses.py   (needs cargo; reads `cargo metadata`).
"""
import json
import re
import subprocess
import sys

PERMISSIVE = {
    "MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib", "Unicode-3.0",
    "Unicode-DFS-2016", "0BSD", "CC0-1.0", "Unlicense", "BSL-1.0", "CDLA-Permissive-2.0",
    "MIT-0", "LLVM-exception",
}

def acceptable(expr: str) -> bool:
    for alternative in re.split(r"\s+OR\s+|/", expr):
        ids = re.split(r"\s+AND\s+|\s+WITH\s+|[()]", alternative)
        ids = [i.strip() for i in ids if i.strip()]
        if ids and all(i in PERMISSIVE for i in ids):
            return True
    return False

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    check=True, capture_output=True, text=True).stdout)
bad = [(p["name"], p["version"], p.get("license")) for p in meta["packages"]
       if not acceptable(p.get("license") or "")]
for name, version, lic in bad:
    print(f"check-licenses: {name} {version}: licence {lic!r} is not compatible with MIT OR Apache-2.0")
print(f"check-licenses: {len(meta['packages'])} packages, {len(bad)} incompatible")
sys.exit(1 if bad else 0)
