"""Wall time and peak memory of a command, its whole process tree included.

    python bench/measure.py -- snakemake --cores all results/winrates.csv

Peak memory is the largest sum of resident set sizes over the process and all its
descendants, sampled every 0.2 s from /proc (Linux). Prints one JSON line.
"""

import json
import os
import subprocess
import sys
import time


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        tree.setdefault(ppid, []).append(int(pid))
    return tree


def _tree_rss_kb(root: int) -> int:
    tree, total, stack = _children(), 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total


def main() -> int:
    cmd = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid))
        time.sleep(0.2)
    print(json.dumps({"command": " ".join(cmd), "returncode": proc.returncode,
                      "wall_s": round(time.monotonic() - start, 1), "peak_rss_mb": round(peak / 1024)}))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
