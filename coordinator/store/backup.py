"""Consistent copies of the coordinator's state while it runs.

SQLite's online backup API copies a database page by page under a read
transaction, so the copy is a consistent snapshot even while the
coordinator keeps writing (WAL mode). The copy is checked with
`PRAGMA integrity_check` and only then renamed into place.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from .database import StoreError


def backup_database(source: str | Path, dest: str | Path) -> Path:
    src_path, dest_path = Path(source), Path(dest)
    if not src_path.exists():
        raise StoreError(f"cannot back up {src_path}: no such database")
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_path.with_name(dest_path.name + ".partial")
    if tmp.exists():
        tmp.unlink()
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
    out = sqlite3.connect(str(tmp))
    try:
        src.backup(out, pages=1024)
        check = out.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"backup of {src_path} failed its integrity check: {check}")
        out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except sqlite3.Error as e:
        raise StoreError(f"cannot back up {src_path} to {dest_path}: {e}") from None
    finally:
        out.close()
        src.close()
    os.replace(tmp, dest_path)
    return dest_path


def backup_file(source: str | Path, dest: str | Path) -> Path | None:
    """Copy a small file (wallet, key) keeping it private (0600)."""
    src_path, dest_path = Path(source), Path(dest)
    if not src_path.exists():
        return None
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_path.with_name(dest_path.name + ".partial")
    shutil.copyfile(src_path, tmp)
    tmp.chmod(0o600)
    os.replace(tmp, dest_path)
    return dest_path
