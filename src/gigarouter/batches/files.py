"""Batch files on disk: uploaded inputs, a spool per running batch, and the finished output files.

Everything lives in one directory (``batch_files_dir``, default
``data_dir/batch-files``), private to the server (0700). An upload is
written to a temporary name and renamed once it has been checked, so a
crash never leaves a half file under a name the database knows.

The spool: while a batch runs, each finished line's output (an output- or
error-file line) is appended to ``<batch id>.spool`` and flushed to disk
before the database records the line (offset and length). A crash between
the two leaves bytes in the spool that no row points to; they are never
read, and the line runs again (without a second charge, see runner.py).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gigarouter.errors import InvalidRequest, PayloadTooLarge

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """A checked upload, stored under ``name``."""

    name: str
    bytes: int
    lines: int


class FileStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._spool_lock = threading.Lock()

    def ensure(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a file name of ours: {name!r}")
        return self.directory / name

    # -- uploads -----------------------------------------------------------------------------

    def save_upload(self, source: BinaryIO, *, name: str, max_bytes: int, max_lines: int) -> Upload:
        """Copy an uploaded JSONL file in, checking it is UTF-8 and within the limits (blocking).

        Blank lines are ignored (a trailing newline is not a line); each other
        line is one request, checked when its batch runs (a bad line fails alone).
        """
        self.ensure()
        temporary = self.path(f".upload-{uuid.uuid4().hex}")
        size = lines = 0
        try:
            with open(temporary, "wb") as out:
                for number, line in enumerate(source, start=1):
                    size += len(line)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"the file is larger than batch_max_file_bytes ({max_bytes} bytes)",
                                              param="file", code="file_too_large")
                    if not line.strip():
                        out.write(line)
                        continue
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError:
                        raise InvalidRequest(f"line {number} of the file is not UTF-8 text", param="file",
                                             code="invalid_file") from None
                    lines += 1
                    if lines > max_lines:
                        raise InvalidRequest(f"the file has more than batch_max_lines ({max_lines}) requests",
                                             param="file", code="too_many_lines")
                    out.write(line)
                out.flush()
                os.fsync(out.fileno())
            if lines == 0:
                raise InvalidRequest("the file holds no requests (one JSON object per line)", param="file",
                                     code="empty_file")
            os.replace(temporary, self.path(name))
        finally:
            temporary.unlink(missing_ok=True)
        return Upload(name=name, bytes=size, lines=lines)

    def lines(self, name: str) -> Iterator[tuple[int, bytes]]:
        """The requests of an input file: (0-based index among non-blank lines, the line)."""
        index = 0
        with open(self.path(name), "rb") as source:
            for line in source:
                if line.strip():
                    yield index, line.strip()
                    index += 1

    def open(self, name: str) -> BinaryIO:
        return open(self.path(name), "rb")

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    # -- spools and outputs ------------------------------------------------------------------

    def append(self, name: str, data: bytes) -> int:
        """Append ``data`` to a spool and make it durable; the offset it starts at (blocking)."""
        with self._spool_lock, open(self.path(name), "ab") as spool:
            offset = spool.tell()
            spool.write(data)
            spool.flush()
            os.fsync(spool.fileno())
        return offset

    def write(self, name: str, parts: Iterable[bytes]) -> int:
        """Write a whole file atomically (temporary name, fsync, rename); its size (blocking)."""
        self.ensure()
        temporary = self.path(f".write-{uuid.uuid4().hex}")
        size = 0
        try:
            with open(temporary, "wb") as out:
                for part in parts:
                    out.write(part)
                    size += len(part)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path(name))
        finally:
            temporary.unlink(missing_ok=True)
        return size

    def read_spool(self, name: str, segments: Iterable[tuple[int, int]]) -> Iterator[bytes]:
        """The spool's bytes at each (offset, length), in the order given."""
        with open(self.path(name), "rb") as spool:
            for offset, length in segments:
                spool.seek(offset)
                data = spool.read(length)
                if len(data) != length:
                    raise OSError(f"spool {name} is shorter than the database says")
                yield data
