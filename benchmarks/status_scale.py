"""`archive_status()` (what `status --json`, /api/status, /readyz and the dashboard's first
screen are built from) on a catalog of 1,000,000 instances.

    python3 benchmarks/status_scale.py [--instances 1000000] [--runs 5] [--keep DIR]

A real archive (`dicomvault init`, SQLite catalog, file primary) with an off-site file site
configured; its catalog is filled with synthetic rows through the real schema (SQLAlchemy
Core bulk inserts of catalog/schema.py tables, no files ingested): 20 instances per series,
5 series per study, 2 studies per patient; every version verified on the primary and on
`offsite` except the newest 2 % still owed there (a backlog), each copy last proven within
the last 29 days as `serve`'s scrub keeps it (`--unscrubbed`: proven only when copied, a year
ago for the oldest: the scrub never ran). Then `archive_status()` runs
`--runs` times in-process; median, min and max are printed, and the slowest parts of one run
(cProfile, by cumulative time) with --profile.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

PER_SERIES, SERIES_PER_STUDY, STUDIES_PER_PATIENT = 20, 5, 2
CHUNK = 50_000
DAY = 86400.0


def _fill(catalog, instances: int, now: float, scrubbed: bool) -> None:  # type: ignore[no-untyped-def]
    from dicomvault.catalog import schema as t

    series_count = -(-instances // PER_SERIES)
    studies = -(-series_count // SERIES_PER_STUDY)
    patients = -(-studies // STUDIES_PER_PATIENT)
    span = 365 * DAY  # a year of arrivals, oldest first
    with catalog.write() as conn:
        conn.execute(insert(t.patients), [{"id": p + 1, "patient_id": f"P{p}", "patient_name": f"DOE^{p}"}
                                          for p in range(patients)])
        conn.execute(insert(t.study_keys), [{"key_id": f"k{s}", "study_uid": f"1.2.9.{s}", "wrapped_site": b"s",
                                             "wrapped_recovery": b"r", "created_at": now, "embedded": False}
                                            for s in range(studies)])
        conn.execute(insert(t.studies), [{"id": s + 1, "study_uid": f"1.2.9.{s}", "patient_pk": s // STUDIES_PER_PATIENT + 1,
                                          "study_date": "20260101", "created_at": now, "updated_at": now}
                                         for s in range(studies)])
        conn.execute(insert(t.series), [{"id": e + 1, "series_uid": f"1.2.9.{e // SERIES_PER_STUDY}.{e}",
                                         "study_pk": e // SERIES_PER_STUDY + 1, "modality": ("CT", "MR", "CR")[e % 3]}
                                        for e in range(series_count)])
    owed_from = int(instances * 0.98)
    for start in range(0, instances, CHUNK):
        ids = range(start, min(instances, start + CHUNK))
        received = [now - span + span * i / instances for i in ids]
        with catalog.write() as conn:
            conn.execute(insert(t.instances), [{"id": i + 1, "sop_instance_uid": f"1.2.9.9.{i}",
                                                "series_pk": i // PER_SERIES + 1,
                                                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"} for i in ids])
            conn.execute(insert(t.versions), [
                {"id": i + 1, "instance_pk": i + 1, "version": 0, "object_id": f"o{i:063d}", "sha256": "a" * 64,
                 "dataset_sha256": f"{i:064d}", "size_original": 524_288, "size_stored": 262_144,
                 "transfer_syntax_uid": "1.2.840.10008.1.2.1", "codec": "zstd",
                 "key_id": f"k{i // (PER_SERIES * SERIES_PER_STUDY)}", "received_at": at, "source": "bench"}
                for i, at in zip(ids, received)])
            rows = []
            for i, at in zip(ids, received):
                oid = f"o{i:063d}"
                proven = max(at, now - (i % 29) * DAY - 60) if scrubbed else at
                rows.append({"object_id": oid, "site": "primary", "state": "verified", "size": 262_144,
                             "owed_since": at, "attempts": 0, "next_attempt_at": 0.0, "copied_at": at,
                             "verified_at": proven})
                done = i < owed_from
                rows.append({"object_id": oid, "site": "offsite", "state": "verified" if done else "owed",
                             "size": 262_144, "owed_since": at, "attempts": 0, "next_attempt_at": 0.0,
                             "copied_at": at + 5 if done else None, "verified_at": proven + 5 if done else None})
            conn.execute(insert(t.copies), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory; an existing filled one is reused")
    parser.add_argument("--unscrubbed", action="store_true", help="copies proven only when copied (no scrub ran)")
    parser.add_argument("--profile", action="store_true", help="print the top 25 functions of one run")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="dv-status-scale-"))
    config = root / "dicomvault.toml"
    from dicomvault.archive.core import Archive
    from dicomvault.config import load_settings
    from dicomvault.serve.status import archive_status

    fresh = not config.exists()
    if fresh:
        subprocess.run([sys.executable, "-m", "dicomvault.cli", "init", "--dir", str(root)], check=True,
                       capture_output=True)
        (root / "offsite").mkdir()
        with config.open("a", encoding="utf-8") as handle:
            handle.write(f'\n[sites.offsite]\nurl = "file://{root / "offsite"}"\noffsite = true\n')
    archive = Archive.open(load_settings(config))
    if fresh:
        started = time.perf_counter()
        _fill(archive.catalog, args.instances, time.time(), scrubbed=not args.unscrubbed)
        print(f"filled {args.instances:,} instances in {time.perf_counter() - started:.1f} s ({root})")
    archive_status(archive)  # warm the page cache once, as a dashboard that is open would
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        report = archive_status(archive)
        times.append(time.perf_counter() - started)
    print(f"archive_status() over {report['counts']['instances']:,} instances, {args.runs} runs: "
          f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s; "
          f"protection {report['protection']['state']} ({', '.join(r['code'] for r in report['protection']['reasons'])})")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(archive_status, archive)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    archive.close()


if __name__ == "__main__":
    main()
