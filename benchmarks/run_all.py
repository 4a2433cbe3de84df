"""`make perf`: run every benchmark script, then print each figure next to its target.

Usage: python benchmarks/run_all.py [SCRIPT...]   e.g. `run_all.py harness cache` runs only those two.
Figures are ratios measured side by side in one process run; see the README's performance section.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS  # noqa: E402

SCRIPTS = [
    ("bench_metrics.py", []),
    ("bench_harness.py", []),
    ("bench_phi3v_image.py", []),
    ("bench_loading.py", []),
    ("bench_cache.py", []),
    ("bench_phi3v_lm.py", []),
]


def main() -> int:
    only = {a if a.endswith(".py") else f"bench_{a}.py" for a in sys.argv[1:]}  # e.g. `harness loading`
    RESULTS.unlink(missing_ok=True)
    failed = []
    for script, extra in SCRIPTS:
        if only and script not in only:
            continue
        if not (HERE / script).exists():
            print(f"== {script}: missing", flush=True)
            failed.append(script)
            continue
        print(f"== {script}", flush=True)
        r = subprocess.run([sys.executable, str(HERE / script), *extra], cwd=HERE.parent)
        if r.returncode:
            failed.append(script)
    print("\n== summary")
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            d = json.loads(line)
            print(f"[{'MET ' if d['ok'] else 'MISS'}] {d['name']}: {d['value']:.3f} (target {d['target']}) {d['detail']}")
    if failed:
        print(f"scripts that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
