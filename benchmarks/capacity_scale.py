"""What the dashboard's capacity panels cost with 1,000,000 instances in the catalog.

    python3 benchmarks/capacity_scale.py [--instances N] [--keep DIR]

Fills a SQLite catalog (benchmarks/synthetic_catalog.py: versions with sizes and receipt times
spread over 120 days, a verified copy on two sites), then times the functions behind
``GET /api/capacity``, ``/api/ingest-history?range=24h|30d`` and ``/api/rto`` (jobs/capacity.py),
each 5 times after one warm-up call: median, min, max. A second round gives a third of the
studies a keep-until day within the next five years and enables retention, so the forecast
also sums what expires. ``--keep DIR`` reuses (or leaves) the filled catalog there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic_catalog import fill  # noqa: E402

from dicomvault.catalog import Catalog  # noqa: E402
from dicomvault.config import ReplicaSiteSettings, RetentionSettings, Settings  # noqa: E402
from dicomvault.jobs.capacity import capacity_report, ingest_history, rto_estimate  # noqa: E402


def timed(call) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    call()
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        call()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs), min(runs), max(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp())
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory}/catalog.sqlite3"
    started = time.perf_counter()
    catalog = Catalog(url) if (directory / "catalog.sqlite3").exists() else fill(url, instances=args.instances)
    print(f"catalog: {args.instances:,} instances ready in {time.perf_counter() - started:.1f} s ({directory})")
    settings = Settings(base_dir=directory, catalog_url=url, primary_site_url=f"file://{directory}",
                        site_key_file=directory / "k", recovery_public_key_file=directory / "r",
                        replicas=(ReplicaSiteSettings("offsite", "s3://bucket/prefix"),))
    calls = {"capacity": lambda: capacity_report(catalog, settings),
             "ingest-history 24h": lambda: ingest_history(catalog, "24h"),
             "ingest-history 30d": lambda: ingest_history(catalog, "30d"),
             "rto": lambda: rto_estimate(catalog)}
    total = 0.0
    for name, call in calls.items():
        median, low, high = timed(call)
        total += median
        print(f"{name:>28}: median {median:7.1f} ms  min {low:7.1f}  max {high:7.1f}")
    print(f"{'all four (sum of medians)':>28}: {total:7.1f} ms")
    with catalog.write() as conn:  # a third of the studies expire within five years
        conn.exec_driver_sql("UPDATE study_retention SET keep_until = date('now', '+' || (id % 1800) || ' days'), "
                             "rule = 'default' FROM (SELECT id, study_uid AS uid FROM studies WHERE id % 3 = 0) "
                             "WHERE study_uid = uid")
    expiring = Settings(**{**settings.__dict__, "retention": RetentionSettings(enabled=True, default="5y")})
    median, low, high = timed(lambda: capacity_report(catalog, expiring))
    print(f"{'capacity, 1/3 expiring':>28}: median {median:7.1f} ms  min {low:7.1f}  max {high:7.1f}")
    catalog.close()


if __name__ == "__main__":
    main()
