"""Paths from the user, checked before any work starts (one rule each, used by every command):

* :func:`input_file`: a file to read must be a regular file (a FIFO or a device would block
  or never end, a directory is no file);
* :func:`output_dir`: a directory to write must be a directory (created if missing) that a
  file can be written into, checked before training, compiling or estimating, not after;
* :func:`find_files`: a bounded search that follows no symlinks and stops after a fixed
  number of entries (the report's scan for runs once walked from ``/``).

Failures are :class:`~qsp.errors.ConfigError` naming the option and the path.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

#: entries :func:`find_files` looks at before it stops (a bounded scan, whatever the folder)
MAX_SCAN_ENTRIES = 20_000


def input_file(path, what: str, error=ConfigError) -> Path:
    """``path`` as a Path if it is a regular file (symlinks to one are fine), else ``error``
    (ConfigError by default) naming ``what``."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what}: file {str(p)!r} does not exist")
    if not p.is_file():
        kind = "a directory" if p.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise error(f"{what}: {str(p)!r} is {kind}")
    return p


#: the largest YAML file qsp reads (configs, board and power files, hls4ml configurations)
MAX_YAML_BYTES = 16 << 20


def read_yaml(path, what: str, error=ConfigError):
    """A user's YAML file as Python data (None when empty): a regular file (a FIFO or device
    is refused unread), at most MAX_YAML_BYTES, UTF-8, valid YAML that nests within
    Python's recursion limit; otherwise ``error`` naming ``what`` and the path."""
    import yaml

    p = input_file(path, what, error)
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise error(f"{what}: {p} is larger than {MAX_YAML_BYTES >> 20} MiB")
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{what}: {p} cannot be read ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise error(f"{what}: {p} is not valid YAML ({type(e).__name__}: {str(e)[:200]})") from None


def output_dir(path, what: str) -> Path:
    """``path`` as a Path, created if missing, once a probe file could be written into it;
    else ConfigError (a file in the way, a read-only or missing file system). Permissions
    are tried, not read (``os.access`` says yes to root everywhere)."""
    import tempfile

    p = Path(path)
    if (p.exists() or p.is_symlink()) and not p.is_dir():
        raise ConfigError(f"{what}: {str(p)!r} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p, prefix=".qsp-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what}: cannot write into {str(p)!r} ({e.strerror or e})") from None
    return p


def find_files(root, name: str, max_depth: int = 3, max_entries: int = MAX_SCAN_ENTRIES) -> list[Path]:
    """Regular files called ``name`` under ``root``, at most ``max_depth`` folders down, sorted.
    Symlinks are not followed (neither to folders nor to files), unreadable folders are
    skipped, and the scan stops after ``max_entries`` directory entries."""
    found: list[Path] = []
    seen = 0
    level = [Path(root)]
    for depth in range(max_depth + 1):
        nxt = []
        for d in level:
            try:
                with os.scandir(d) as it:
                    for e in it:
                        seen += 1
                        if seen > max_entries:
                            return sorted(found)
                        if e.is_dir(follow_symlinks=False):
                            if depth < max_depth:
                                nxt.append(Path(e.path))
                        elif e.name == name and e.is_file(follow_symlinks=False):
                            found.append(Path(e.path))
            except OSError:
                continue
        level = nxt
    return sorted(found)
