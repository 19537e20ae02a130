"""What a user installs: the lock of tested versions against the floors, install.sh using it,
the Snakemake floor, and the rules' conda env file (correct where Snakemake copies it)."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
INSTALLED_EXTRAS = ("test", "slurm", "local-judge")  # what install.sh installs


def lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_the_lock_pins_every_requirement_within_its_floor():
    pins = lock()
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    reqs += [Requirement(r) for e in INSTALLED_EXTRAS for r in PYPROJECT["project"]["optional-dependencies"][e]]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} violates {req}"
    assert not pins["torch"].local  # one pin for the CPU and the CUDA build
    assert "drdo-workflow" not in pins  # the project itself is installed from the checkout


def test_install_sh_installs_every_package_with_the_lock():
    lines = [line for line in (REPO / "install.sh").read_text().splitlines() if " pip install" in line
             and not line.lstrip().startswith("#")]
    installs = [line for line in lines if "--upgrade pip" not in line]
    assert len(installs) == 4 and all('-c "$LOCK"' in line for line in installs)
    assert "LOCK=requirements/lock.txt" in (REPO / "install.sh").read_text()


def test_snakemake_floor_is_9_everywhere():
    floor = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("snakemake")][0]
    assert str(floor.specifier) == ">=9.0"
    assert 'min_version("9.0")' in (REPO / "Snakefile").read_text()


def test_the_conda_env_installs_this_checkout_from_where_snakemake_copies_it(tmp_path):
    """Snakemake copies envs/drdo.yaml to .snakemake/conda/<hash>.yaml and conda hands its pip
    lines to pip as a requirements file there: resolved from that copy, with DRDO_REPO as the
    workflow sets it, they name this checkout and the lock (pip's own dry run)."""
    spec = yaml.safe_load((REPO / "envs" / "drdo.yaml").read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    copy = tmp_path / ".snakemake" / "conda"
    copy.mkdir(parents=True)
    (copy / "condaenv.requirements.txt").write_text("\n".join(pip) + "\n")
    env = {**os.environ, "DRDO_REPO": workflow_sets_drdo_repo(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                           "--no-build-isolation", "-r", "condaenv.requirements.txt"],
                          cwd=copy, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    would = next(line for line in proc.stdout.splitlines() if line.startswith("Would install"))
    assert "drdo-workflow-0.1.0" in would and re.search(r"torch-2\.13\.0\b", would)  # the lock's torch


def workflow_sets_drdo_repo(workdir: Path) -> str:
    """DRDO_REPO as parsing the Snakefile sets it (Snakemake creates conda envs in that process)."""
    code = ("import os; from pathlib import Path; from snakemake.api import SnakemakeApi; "
            "from snakemake.settings.types import ConfigSettings, ResourceSettings, OutputSettings\n"
            "with SnakemakeApi(OutputSettings()) as api:\n"
            f"    api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path({str(REPO / 'Snakefile')!r}),"
            f" config_settings=ConfigSettings(configfiles=[Path({str(REPO / 'tests/configs/e2e.yaml')!r})]),"
            f" workdir=Path({str(workdir)!r})).dag()\n"
            "print(os.environ['DRDO_REPO'])")
    env = {k: v for k, v in os.environ.items() if k != "DRDO_REPO"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    repo = proc.stdout.splitlines()[-1]
    assert Path(repo) == REPO
    return repo
