"""Per-rule wall times and the critical path of a Snakemake run, from its log.

    python bench/rule_times.py .snakemake/log/<run>.snakemake.log

Snakemake stamps each job's start ("rule X:" / "localrule X:" after a timestamp, with its
jobid) and end ("Finished jobid: N"), to the second. Prints a Markdown table: per rule the
number of jobs, the sum and the longest of their wall times; then the chain that ends with the
last job, each link the job that finished last before the next one started (a dependency or the
job whose core it waited for): the run's critical path.
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
DONE = re.compile(r"^Finished jobid: (\d+)")


def parse(lines) -> list[dict]:
    jobs: dict[int, dict] = {}
    now, rule, pending = None, None, None
    for line in lines:
        line = line.rstrip("\n")
        if m := STAMP.match(line):
            now = time.mktime(time.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"))
        elif m := RULE.match(line):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule:
            pending = jobs[int(m.group(1))] = {"jobid": int(m.group(1)), "rule": rule, "start": now, "wildcards": ""}
            rule = None
        elif (m := WILDCARDS.match(line)) and pending:
            pending["wildcards"] = m.group(1)
        elif m := DONE.match(line):
            if int(m.group(1)) in jobs:
                jobs[int(m.group(1))]["end"] = now
    return [j for j in jobs.values() if "end" in j]


def main(path: str) -> None:
    with open(path) as fh:
        jobs = sorted(parse(fh), key=lambda j: j["start"])
    if not jobs:
        sys.exit(f"{path}: no finished jobs found")
    t0 = min(j["start"] for j in jobs)
    per_rule = defaultdict(list)
    for j in jobs:
        per_rule[j["rule"]].append(j["end"] - j["start"])
    total = max(j["end"] for j in jobs) - t0
    print(f"wall time from the first job's start to the last job's end: {total:.0f} s\n")
    print("| rule | jobs | sum of wall times (s) | longest job (s) |\n|---|---:|---:|---:|")
    for rule, ds in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {rule} | {len(ds)} | {sum(ds):.0f} | {max(ds):.0f} |")
    chain, cur = [], max(jobs, key=lambda j: (j["end"], j["start"]))
    while cur:
        chain.append(cur)
        before = [j for j in jobs if j["end"] <= cur["start"] and j is not cur]
        cur = max(before, key=lambda j: j["end"]) if before else None
    print("\ncritical path (start, end in s from the first start):\n")
    print("| rule | wildcards | start | end | wall (s) |\n|---|---|---:|---:|---:|")
    for j in reversed(chain):
        print(f"| {j['rule']} | {j['wildcards']} | {j['start'] - t0:.0f} | {j['end'] - t0:.0f} | "
              f"{j['end'] - j['start']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
