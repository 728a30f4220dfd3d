"""A dataset job's folder: its record, its lock and its own part files — so that a folder always
reads as one job, whatever was killed, changed or started twice.

- ``_kql_job.json``, the **record**: what the rows depend on (the model's weights, the options),
  as a digest with a readable summary. A job whose record differs refuses to write here, naming
  what differs; ``overwrite`` replaces the other job's files instead.
- ``.kql-lock``, the **lock**: held (``flock``) by the one process writing; a second writer
  refuses at once, naming the first. The kernel releases it when that process dies, however.
- ``part-<time>-<id>.parquet``, the **rows**: whole items per file, each written under a hidden
  temporary name and renamed in, each carrying the record's digest in its metadata. Only these
  are the job's: other files in the folder (a user's own Parquet) are neither read as rows nor
  removed. Files that belong to rows (``explain_dataset``'s overlays: ``attached(rows)``) go
  with their rows.
  Temporary parts a killed writer left are removed when the next writer takes the lock; a part
  whose rows are superseded is replaced atomically (``os.replace``).

``pyarrow.parquet.read_table(folder.parts())``, ``JobFolder.read`` or DuckDB's
``read_parquet('<folder>/part-*.parquet')`` read the rows.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compiler.errors import InvalidInputError

log = logging.getLogger(__name__)

RECORD = "_kql_job.json"
LOCK = ".kql-lock"
PART = re.compile(r"part-\d{8}-\d{6}-[0-9a-f]{8}\.parquet")
TEMPORARY = re.compile(r"\.part-\d{8}-\d{6}-[0-9a-f]{8}\.parquet\.tmp")
DIGEST_KEY = b"krypton_ql.job"


@dataclass(frozen=True)
class Record:
    """What a job's rows depend on: a ``kind`` and a summary of named values (strings), whose
    digest marks the job's files."""

    kind: str
    summary: dict[str, str]

    @property
    def digest(self) -> str:
        text = json.dumps({"kind": self.kind, **self.summary}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def differences(self, other: Record) -> list[str]:
        """What differs, as "name: theirs here, ours now" phrases."""
        if other.kind != self.kind:
            return [f"a {other.kind} job, not a {self.kind} one"]
        names = sorted(set(self.summary) | set(other.summary))
        there, now = other.summary, self.summary
        return [
            f"{name} {there.get(name, '(none)')} there, {now.get(name, '(none)')} now"
            for name in names
            if there.get(name) != now.get(name)
        ]


class JobFolder:
    """A job's folder (see the module docstring); ``hint`` says how the caller overwrites
    (``--overwrite`` on the command line, ``overwrite=True`` in Python); ``attached(rows)``
    names the files that belong to rows and leave with them."""

    def __init__(
        self,
        path: Path,
        record: Record,
        hint: str = "overwrite=True",
        attached: Callable[[pa.Table], list[Path]] | None = None,
    ) -> None:
        self.path, self.record, self.hint = Path(path), record, hint
        self.attached = attached or (lambda rows: [])

    @classmethod
    def existing(cls, path: Path) -> JobFolder | None:
        """The job recorded in ``path`` (None: no readable record there), to read its rows."""
        record = _read_record(path / RECORD)
        return None if record is None else cls(path, record)

    @contextmanager
    def writing(self, overwrite: bool = False) -> Iterator[JobFolder]:
        """Hold the folder for writing: created if needed and checked writable, locked, cleared
        of a killed writer's temporary parts, and recorded as this job's (``overwrite``: the
        job files of whatever job was there are removed first)."""
        self._create()
        with self._locked():
            for leftover in self._matching(TEMPORARY):
                leftover.unlink(missing_ok=True)
            if overwrite:
                self._remove_job_files()
            self._check_record()
            yield self

    def parts(self) -> list[Path]:
        """The job's part files, oldest first (others in the folder are not the job's)."""
        return [part for part in self._matching(PART) if _digest(part) == self.record.digest]

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """The job's rows (None: none yet)."""
        parts = self.parts()
        if not parts:
            return None
        return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts])

    def write(self, table: pa.Table) -> Path:
        """One part file: written under a temporary name, then renamed in (never half there)."""
        name = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        staging = self.path / f".{name}.tmp"
        self._write_file(staging, table)
        staging.rename(self.path / name)
        return self.path / name

    def drop(self, unwanted: Callable[[pa.Table], pa.Array]) -> int:
        """Remove the rows ``unwanted(table)`` marks (a boolean array) from the job's parts, each
        part replaced atomically by its remaining rows (or removed); the rows removed."""
        removed = 0
        for part in self.parts():
            table = pq.read_table(part)
            mask = unwanted(table)
            count = int(pc.sum(mask).as_py() or 0)
            if not count:
                continue
            removed += count
            kept = table.filter(pc.invert(mask))
            if not len(kept):
                part.unlink()
            else:
                staging = part.with_name(f".{part.name}.tmp")
                self._write_file(staging, kept)
                os.replace(staging, part)  # atomic: the old rows or the new ones, never neither
            for path in self.attached(table.filter(mask)):
                path.unlink(missing_ok=True)
        return removed

    def _write_file(self, path: Path, table: pa.Table) -> None:
        metadata = {**(table.schema.metadata or {}), DIGEST_KEY: self.record.digest.encode()}
        pq.write_table(table.replace_schema_metadata(metadata), path)

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInputError(f"{self.path} is a file, not a folder for the job's rows")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".kql-probe-{uuid.uuid4().hex[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise InvalidInputError(
                f"cannot write the job's rows to {self.path}: {error.strerror or error}"
            ) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        descriptor = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
                raise InvalidInputError(
                    f"another job is writing to {self.path} ({holder or 'a process'}): wait "
                    "for it to finish, or choose another folder"
                ) from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"process {os.getpid()}, since {time.ctime()}".encode(), 0)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def _check_record(self) -> None:
        """Record this job in an empty folder; refuse one that holds another job's rows."""
        path = self.path / RECORD
        if path.exists():
            there = _read_record(path)
            if there is None:
                raise InvalidInputError(
                    f"{path} is not a job record krypton-ql can read: {self.hint} replaces it, "
                    "or choose another folder"
                )
            if there.digest != self.record.digest:
                differences = "; ".join(self.record.differences(there))
                raise InvalidInputError(
                    f"{self.path} holds another job's rows ({differences}): {self.hint} "
                    "replaces them, or choose another folder"
                )
            return
        foreign = self._matching(PART)
        if foreign:
            raise InvalidInputError(
                f"{self.path} holds {len(foreign)} part files without a job record (written by "
                f"an earlier krypton-ql?): {self.hint} replaces them, or choose another folder"
            )
        staging = self.path / f".{RECORD}.tmp"
        staging.write_text(json.dumps({"kind": self.record.kind, **self.record.summary},
                                      indent=1, sort_keys=True))  # fmt: skip
        staging.rename(path)

    def _remove_job_files(self) -> None:
        """Every job's files: parts (by name) with the files attached to their rows, and the
        record."""
        for part in self._matching(PART):
            try:
                attached = self.attached(pq.read_table(part))
            except (pa.ArrowInvalid, OSError, KeyError):  # not readable, or not our columns
                attached = []
            for path in attached:
                path.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
        (self.path / RECORD).unlink(missing_ok=True)

    def _matching(self, pattern: re.Pattern[str]) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if pattern.fullmatch(p.name))


def _read_record(path: Path) -> Record | None:
    try:
        data = json.loads(path.read_text())
        return Record(str(data.pop("kind")), {k: str(v) for k, v in data.items()})
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def _digest(part: Path) -> str | None:
    """The job digest a part file carries (None: not one of a job's, or unreadable)."""
    try:
        metadata = pq.read_schema(part).metadata or {}
    except (pa.ArrowInvalid, OSError):
        log.warning("ignoring unreadable part %s", part)
        return None
    value = metadata.get(DIGEST_KEY)
    return value.decode() if value is not None else None


def describe(value: Any) -> str:
    """A value as a record's summary holds it."""
    return value if isinstance(value, str) else repr(value)
