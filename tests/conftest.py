"""Every process of the suite computes as the workflow's CPU jobs do, in MKL's strict mode
(``drdo.launch.CPU_REPRODUCIBLE``), set here before torch is imported: a value a test recomputes
in its own process, or a stage it runs without the launcher, then matches a job's bit for bit
where the arithmetic is the same, instead of differing by MKL's run-to-run rounding."""

import os

from drdo.launch import CPU_REPRODUCIBLE

for _key, _value in CPU_REPRODUCIBLE.items():
    os.environ.setdefault(_key, _value)
