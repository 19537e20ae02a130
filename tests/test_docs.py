"""README.md and docs/*.md cite only repository paths and sections that exist (GitHub's anchor
rules), and speak of the project, not of how it was made."""

from __future__ import annotations

import glob
import itertools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# A path in backticks or in a code block is checked when it starts with one of these (outputs under
# results/ and names of other projects are not).
ROOT_DIRS = ("workflow", "config", "tests", "bench", "studies", "docs", ".ci", "envs")
ROOT_FILES = ("Snakefile", "install.sh", "pyproject.toml")
# Code-block lines that write their paths rather than read them (a study's copy-and-gzip recipe).
WRITING_COMMANDS = ("cp ", "mv ", "gzip ", "rm ", "mkdir ")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text (links reduced to their text, code marks dropped), lower
    case, without punctuation other than hyphens and underscores, spaces turned to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    parts = text.split("`")  # HTML tags vanish from the text, except inside code spans
    text = "".join(p if i % 2 else re.sub(r"<[^>]+>", "", p) for i, p in enumerate(parts)).strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def _blocks(text: str):
    """(is_code, line) for every line, code meaning inside a fenced block."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            yield True, None
            continue
        yield fenced, line


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for code, line in _blocks(path.read_text()):
        m = None if code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = anchor(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def _expand(pattern: str) -> list[str]:
    """A documented path as globs: <name> and {name} are any name, {a,b} either."""
    pattern = re.sub(r"<[^>]*>", "*", pattern)
    pattern = re.sub(r"\{([^{},]*)\}", "*", pattern)
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m:
        return list(itertools.chain.from_iterable(
            _expand(pattern[:m.start()] + alt + pattern[m.end():]) for alt in m.group(1).split(",")))
    return [pattern]


def _path_exists(token: str, repo: Path) -> bool:
    return all(glob.glob(str(repo / p.rstrip("/"))) for p in _expand(token))


def _repo_paths(text: str) -> list[str]:
    """Tokens of code spans and code blocks that name a repository path."""
    tokens = []
    for code, line in _blocks(text):
        if line is None:
            continue
        if code:
            if line.lstrip().startswith(WRITING_COMMANDS):
                continue
            spans = [line]
        else:
            spans = re.findall(r"`([^`]+)`", line)
        for span in spans:
            for token in re.split(r"[\s=;()\"']+", span):
                token = token.split("::")[0].rstrip(".:,")
                if "..." in token or not token:
                    continue
                if token in ROOT_FILES or token.split("/")[0] in ROOT_DIRS and "/" in token:
                    tokens.append(token)
    return tokens


def check_page(page: Path, repo: Path) -> list[str]:
    """Every dead reference of a Markdown page, as a readable message."""
    text = page.read_text()
    name = page.relative_to(repo)
    problems = []
    prose = "\n".join("" if code else re.sub(r"`[^`]*`", "", line) for code, line in _blocks(text))
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists() or repo not in [dest, *dest.parents]:
            problems.append(f"{name}: link to a missing path: {target}")
        elif fragment and (dest.suffix != ".md" or fragment not in anchors(dest)):
            problems.append(f"{name}: link to a missing section: {target}")
    for token in _repo_paths(text):
        if not _path_exists(token, repo):
            problems.append(f"{name}: repository path that does not exist: {token}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_dead_references(page):
    problems = check_page(page, REPO)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_speak_of_the_project_not_its_process(page):
    words = re.findall(r"(?i)\b(?:issues?|sessions?|tickets?)\b", page.read_text())
    assert not words, f"{page.name} speaks of {sorted(set(words))}: say what the project does instead"


def test_the_checker_finds_dead_references(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "real.py").write_text("")
    (tmp_path / "docs" / "other.md").write_text("# Real section\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# A `code` title: with (punctuation)\n\n"
        "[ok](other.md#real-section) [ok](other.md#twice-1) [ok](#a-code-title-with-punctuation) "
        "[ok](https://example.org/x#y) `workflow/real.py` `workflow/{real,real}.py` `workflow/<name>.py`\n"
        "[dead](missing.md) [dead](other.md#no-such-section) [dead](#nowhere) `workflow/gone.py`\n"
        "```bash\nsnakemake --configfile config/none.yaml\ncp x workflow/new.py\n```\n")
    problems = check_page(page, tmp_path)
    assert problems == [
        "docs/page.md: link to a missing path: missing.md",
        "docs/page.md: link to a missing section: other.md#no-such-section",
        "docs/page.md: link to a missing section: #nowhere",
        "docs/page.md: repository path that does not exist: workflow/gone.py",
        "docs/page.md: repository path that does not exist: config/none.yaml",
    ]


@pytest.mark.parametrize("heading, expected", [
    ("Five worlds, two training seeds, every factor", "five-worlds-two-training-seeds-every-factor"),
    ("The embedded default's single run", "the-embedded-defaults-single-run"),
    ("Keys of each entry (`resources.<rule>`)", "keys-of-each-entry-resourcesrule"),
    ("SmolLM2-135M-Instruct as the starting policy", "smollm2-135m-instruct-as-the-starting-policy"),
    ("Cache, budget and faults", "cache-budget-and-faults"),
])
def test_github_anchor_rules(heading, expected):
    assert anchor(heading) == expected
