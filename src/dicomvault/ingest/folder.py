"""``dicomvault import``: files and folders, recursively, with a report of what was refused."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.archive.write import IngestRejected, Ingestor

MAX_FILE_BYTES = 4 * 1024**3


@dataclass
class ImportReport:
    stored: int = 0
    duplicates: int = 0
    bytes_stored: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def to_dict(self) -> dict[str, object]:
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "bytes": self.bytes_stored,
            "refused": [{"path": p, "reason": r} for p, r in self.refused],
        }


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def import_paths(
    ingestor: Ingestor, paths: list[Path], actor: str, progress: Callable[[Path], None] | None = None
) -> ImportReport:
    report = ImportReport()
    for path in iter_files(paths):
        try:
            if not path.exists():
                raise IngestRejected("no such file or directory")
            if path.stat().st_size > MAX_FILE_BYTES:
                raise IngestRejected("larger than 4 GiB; not a single DICOM instance we accept")
            data = path.read_bytes()
            result = ingestor.ingest(data, source=f"import:{path}", actor=actor)
        except IngestRejected as exc:
            report.refused.append((str(path), exc.reason))
        except OSError as exc:
            report.refused.append((str(path), f"cannot read: {exc.strerror or exc}"))
        else:
            if result.duplicate:
                report.duplicates += 1
            else:
                report.stored += 1
                report.bytes_stored += len(data)
        if progress is not None:
            progress(path)
    return report
