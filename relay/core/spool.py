"""The spool: message bytes on disk, written durably before anything is acknowledged.

Each file is written to a temporary name, fsynced, renamed into place, and the
directory fsynced, so after a crash a file is either complete or absent. Files
are mode 0600: the spool holds verified advisory text.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

RAW = "raw"  # the message exactly as received
PAYLOAD = "payload"  # the verified content the relay redistributes


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def _dir(self, message_id: str) -> Path:
        if not message_id.isalnum():
            raise ValueError(f"bad spool id {message_id!r}")
        return self.root / message_id[:2] / message_id

    def path(self, message_id: str, name: str) -> Path:
        return self._dir(message_id) / name

    def write(self, message_id: str, name: str, data: bytes) -> Path:
        folder = self._dir(message_id)
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = folder / name
        tmp = folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(folder)
        if created:
            _fsync_dir(folder.parent)
            _fsync_dir(self.root)
        return final

    def read(self, message_id: str, name: str) -> bytes:
        return self.path(message_id, name).read_bytes()

    def remove(self, message_id: str) -> None:
        shutil.rmtree(self._dir(message_id), ignore_errors=True)

    def stored_before(self, moment: float) -> list[str]:
        """Ids of the messages whose folder was last written before `moment` (epoch)."""
        return [
            folder.name
            for shard in self.root.iterdir()
            if shard.is_dir() and len(shard.name) == 2
            for folder in shard.iterdir()
            if folder.is_dir() and folder.name.isalnum() and folder.stat().st_mtime < moment
        ]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
