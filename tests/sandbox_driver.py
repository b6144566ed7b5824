"""The parent side of the sandbox attack tests, run as its own process (as root, or as an unprivileged
user the test drops to), so that "the parent survives" and "the user's files survive" can be checked from
outside, and a killed parent can be simulated.

    python sandbox_driver.py SPEC.json

SPEC: ``{"programs": [...], "config": {SandboxConfig fields}, "workers": N, "probe": bool}``. Prints one
JSON line: ``{"results": [{"ok", "answer", "error", "returncode"}...], "probe": {...}, "pid": ...}``.
Imports only the three sandbox modules (the tests copy them into a folder this user can read), never the
rest of Mova.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from mova.rl.sandbox import SandboxConfig, probe_isolation, run_programs

    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    config = SandboxConfig(**spec.get("config", {}))
    print(json.dumps({"started": True}), flush=True)
    probe = probe_isolation(config) if spec.get("probe") else None
    results = run_programs(spec["programs"], config, max_workers=spec.get("workers"))
    print(json.dumps({"results": [{"ok": r.ok, "answer": r.answer, "error": r.error, "returncode": r.returncode,
                                   "stderr": r.stderr[-300:]} for r in results],
                      "probe": probe}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
