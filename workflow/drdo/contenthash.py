"""Content hashes of local inputs the workflow names by path (data.files, a local model.name_or_path
or oracle.base directory, a GGUF file), for the lineage: an edited or replaced file changes the
lineage of what depends on it (and so re-runs it, even with its size and modification time kept),
a touched or moved one does not (Snakemake's own modification-time trigger still re-runs a job
whose input file is newer than its output).

Each file's hash is cached by (size, mtime_ns, ctime_ns, inode) in a small JSON file, so a no-op
rerun reads no file again (a write or a replacement changes at least one of them; ctime cannot be
set back by tools that copy mtimes). Standard library only: the Snakefile loads this file directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

SKIP = {".git"}  # a cloned model's git objects: not what is loaded


class ContentHashes:
    """sha256 of files and folders, cached in ``cache_file`` (None: in memory only)."""

    def __init__(self, cache_file: str | os.PathLike | None):
        self.cache_file = Path(cache_file) if cache_file else None
        self.entries: dict[str, list] = {}
        self.memo: dict[str, str | None] = {}  # per instance (one workflow parse): each folder walked once
        self.dirty = False
        if self.cache_file and self.cache_file.is_file():
            try:
                self.entries = json.loads(self.cache_file.read_text())
            except (OSError, ValueError):
                self.entries = {}  # unreadable: hash again

    def file(self, path: str | os.PathLike) -> str:
        path = os.path.abspath(path)
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        cached = self.entries.get(path)
        if cached and cached[:4] == stamp:
            return cached[4]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        self.entries[path] = [*stamp, h.hexdigest()]
        self.dirty = True
        return h.hexdigest()

    def tree(self, path: str | os.PathLike) -> str | None:
        """A file's hash, or a folder's (its files' relative names and hashes); None if it does not exist."""
        key = os.path.abspath(path)
        if key not in self.memo:
            self.memo[key] = self._tree(Path(path))
        return self.memo[key]

    def _tree(self, path: Path) -> str | None:
        if path.is_file():
            return self.file(path)
        if not path.is_dir():
            return None
        h = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP)
            for name in sorted(files):
                f = Path(root) / name
                h.update(f"{f.relative_to(path).as_posix()}\0{self.file(f)}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        """Write the cache if it changed (atomically; a read-only folder just keeps no cache)."""
        if not (self.dirty and self.cache_file):
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".content_hashes.", dir=self.cache_file.parent)
            with os.fdopen(fd, "w") as fh:
                json.dump(self.entries, fh)
            os.replace(tmp, self.cache_file)
            self.dirty = False
        except OSError:
            pass
