"""Releases a coordinator holds: verified manifests and content-addressed
chunks on disk.

    <folder>/<release id>/manifest.cose   the signed manifest, as received
    <folder>/chunks/<sha256 hex>          one verified chunk, named by its hash;
                                          the release's chunk table is one too
    <folder>/<version>/{manifest.cose,image.bin}   `microgrid release` output, taken in at start

A chunk is written only after its hash matched the manifest (copy, then
rename: a crash leaves it whole or absent), so what a restart finds on
disk is exactly what was verified: fetching resumes with the chunks still
missing. Chunks are shared between releases with identical content.
A release is held once its manifest and its chunk table (checked against
the manifest's `table`) are; a manifest whose table is not on disk is
learned again from the next announcement.
"""

from __future__ import annotations

import os
from pathlib import Path

from microgrid.shared import release
from microgrid.shared.release import Release


class ReleaseStore:
    def __init__(self, folder: Path, keys: list[bytes]) -> None:
        self.folder = folder
        self.keys = keys
        self.chunk_dir = folder / "chunks"
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        self.releases: dict[str, Release] = {}
        for d in sorted(folder.iterdir()):
            m = d / "manifest.cose"
            if d.name != "chunks" and m.is_file():
                try:
                    if (d / "image.bin").is_file():
                        # `microgrid release --out <this folder>` output.
                        self.add_release(m.read_bytes(), (d / "image.bin").read_bytes())
                    else:
                        signed = m.read_bytes()
                        rel = release.verify(signed, self.keys)
                        table = (self.chunk_dir / rel.table_sha256.hex()).read_bytes()
                        self.add_manifest(signed, table)
                except (release.ReleaseError, OSError):
                    continue  # not trusted (or a key rotated out), or no table yet: not served

    def add_manifest(self, signed: bytes, table: bytes) -> Release:
        """Verify and keep a manifest and its chunk table; ReleaseError if
        the manifest is untrusted or bad, or the table is not the one it
        signs."""
        rel = release.verify(signed, self.keys).attach(table)
        rid = rel.release_id()
        if rid not in self.releases:
            t = self.chunk_dir / rel.table_sha256.hex()
            if not t.exists():
                _write(t, table)
            d = self.folder / rid
            d.mkdir(exist_ok=True)
            _write(d / "manifest.cose", signed)
            self.releases[rid] = rel
        return self.releases[rid]

    def add_release(self, signed: bytes, image: bytes) -> Release:
        """A release made here (`microgrid release`): manifest and image."""
        chunk = release.verify(signed, self.keys).chunk
        rel = self.add_manifest(signed, release.chunk_table(image, chunk))
        for i in range(rel.count):
            if not self.put_chunk(rel, i, image[i * rel.chunk:i * rel.chunk + rel.chunk_len(i)]):
                raise release.ReleaseError(f"image chunk {i} does not match the manifest")
        return rel

    def find(self, prefix: str) -> Release | None:
        """The release whose id starts with `prefix` (16 hex digits in URIs)."""
        if len(prefix) < 16:
            return None
        for rid, rel in self.releases.items():
            if rid.startswith(prefix):
                return rel
        return None

    def _chunk_path(self, rel: Release, i: int) -> Path:
        assert rel.chunks is not None  # held releases have their table attached
        return self.chunk_dir / rel.chunks[i].hex()

    def table(self, rel: Release) -> bytes:
        """The release's chunk table, as its hashes are kept attached."""
        assert rel.chunks is not None
        return b"".join(rel.chunks)

    def put_chunk(self, rel: Release, i: int, data: bytes) -> bool:
        """Keep chunk i if it is what the manifest names; False otherwise."""
        if not rel.chunk_ok(i, data):
            return False
        p = self._chunk_path(rel, i)
        if not p.exists():
            _write(p, data)
        return True

    def chunk(self, rel: Release, i: int) -> bytes | None:
        try:
            return self._chunk_path(rel, i).read_bytes()
        except OSError:
            return None

    def missing(self, rel: Release) -> list[int]:
        return [i for i in range(rel.count) if not self._chunk_path(rel, i).exists()]

    def complete(self, rel: Release) -> bool:
        return not self.missing(rel)

    def newest(self, board: str) -> Release | None:
        """The newest complete release for `board`."""
        best = None
        for rel in self.releases.values():
            if rel.board == board and self.complete(rel):
                if best is None or release.parse_version(rel.version) > release.parse_version(best.version):
                    best = rel
        return best


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
