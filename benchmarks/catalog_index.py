"""Catalog cost of indexing versions, as the group committer does it (200 per transaction).

    python3 benchmarks/catalog_index.py

`first-time`: 10,000 new instances of 20 studies (5 series each): the rows of known
studies are followed (catalog/db.py _FOLLOW) by one no-op UPDATE per row per transaction.
`corrected`: the same 10,000 instances again, each a new version with another
StudyDescription and SeriesDescription (every study and series row really changes).
Catalog work only (no object sealing, no audit row): the part corrections could slow down.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from dicomvault.catalog import Catalog, InstanceAttributes, VersionRecord

STUDIES, SERIES, PER_SERIES, BATCH = 20, 5, 100, 200


def _rows(description: str, tag: str) -> list[tuple[InstanceAttributes, VersionRecord]]:
    rows = []
    for s in range(STUDIES):
        for se in range(SERIES):
            for i in range(PER_SERIES):
                uid = f"1.2.{s}.{se}.{i}"
                a = InstanceAttributes(
                    sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid=f"1.2.{s}",
                    series_uid=f"1.2.{s}.{se}", transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id=f"P{s % 7}",
                    patient_name=f"DOE^{s % 7}", study_description=description, modality="CT",
                    series_description=f"{description} {se}", instance_number=str(i))
                r = VersionRecord(
                    sop_instance_uid=uid, version=0, object_id=f"{tag}{uid}", sha256="a" * 64,
                    dataset_sha256=f"{tag}{uid}", size_original=1, size_stored=1,
                    transfer_syntax_uid=a.transfer_syntax_uid, codec="zstd", key_id=f"k{s}", received_at=time.time(),
                    source="bench")
                rows.append((a, r))
    return rows


def _index(catalog: Catalog, rows: list[tuple[InstanceAttributes, VersionRecord]]) -> float:
    started = time.perf_counter()
    for k in range(0, len(rows), BATCH):
        with catalog.write() as conn:
            for a, r in rows[k:k + BATCH]:
                catalog.find_version_by_content(conn, a.sop_instance_uid, r.dataset_sha256)
                catalog.add_version(conn, a, r)
                catalog.add_copies(conn, r.object_id, 1, r.received_at, ["offsite"])
    return (time.perf_counter() - started) / len(rows) * 1e6


def run() -> tuple[float, float]:
    catalog = Catalog(f"sqlite:///{tempfile.mkdtemp()}/catalog.sqlite3")
    with catalog.write() as conn:
        for s in range(STUDIES):
            catalog.add_study_key(conn, f"1.2.{s}", f"k{s}", b"s", b"r")
    first = _index(catalog, _rows("CT HEAD", "a"))
    corrected = _index(catalog, _rows("CT HEAD CORRECTED", "b"))
    catalog.close()
    return first, corrected


if __name__ == "__main__":
    runs = [run() for _ in range(5)]
    for name, values in (("first-time", [r[0] for r in runs]), ("corrected", [r[1] for r in runs])):
        print(f"{name:>10}: median {statistics.median(values):6.1f} us/instance  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
