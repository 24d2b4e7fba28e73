"""C-FIND latency: study-level queries through the shared query engine (issue 4).

Synthesises a catalog of --studies studies / --instances instances (default 10,000 /
1,000,000; ~2,000 patients, study dates over 5 years, 1-5 series per study, CT/MR/CR/US,
one stored version per instance), caches it under --cache-dir, then times a realistic mix
of study-level queries through ``dicomvault.catalog.query.run_query`` (the code path of the
C-FIND SCP and QIDO-RS), each consumed to its last row with the usual return keys,
NumberOfStudyRelatedInstances and ModalitiesInStudy included. Prints p50/p95/max per kind
and overall against the target (study-level p95 < 50 ms) and the query plans.

    python benchmarks/retrieve/cfind.py                      # build once (a few minutes), then time
    python benchmarks/retrieve/cfind.py --repeat 100 --json  # machine-readable summary
    python benchmarks/retrieve/cfind.py --url postgresql+psycopg://u@host/db   # an empty PG catalog
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import insert, text

from dicomvault.catalog import Catalog
from dicomvault.catalog import schema as t
from dicomvault.catalog.query import Query, run_query, statement_for

TARGET_P95_MS = 50.0
DATA_VERSION = 2  # bump when the generated data changes: the cached file name carries it
ROOT = "1.2.826.0.1.3680043.10.999"
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}
STUDY_MODALITY_WEIGHTS = {"CT": 0.30, "MR": 0.20, "CR": 0.35, "US": 0.15}
SERIES_SIZE_WEIGHT = {"CT": 60.0, "MR": 40.0, "CR": 1.5, "US": 12.0}  # relative instances per series
DESCRIPTIONS = {
    "CT": ["CT CHEST W CONTRAST", "CT HEAD WO", "CT ABDOMEN PELVIS"],
    "MR": ["MR BRAIN W WO", "MR KNEE LEFT", "MR LUMBAR SPINE"],
    "CR": ["XR CHEST 2 VIEWS", "XR HAND RIGHT", "XR PELVIS"],
    "US": ["US ABDOMEN COMPLETE", "US OB", "US THYROID"],
}
# Surnames with a realistic skew (US census shares: SMITH 0.9%, JOHNSON 0.7%, ...), a few
# non-ASCII ones, and a long tail of 5,120 synthetic names sharing the rest.
TOP_SURNAMES = {
    "SMITH": 0.0088, "JOHNSON": 0.0069, "WILLIAMS": 0.0057, "BROWN": 0.0051, "JONES": 0.0050, "MILLER": 0.0042,
    "DAVIS": 0.0040, "GARCIA": 0.0032, "RODRIGUEZ": 0.0023, "WILSON": 0.0023, "MÜLLER": 0.0020,
    "GONZÁLEZ": 0.0020, "NGUYEN": 0.0020, "SMIRNOV": 0.0005, "SMYTHE": 0.0003, "ØSTERGÅRD": 0.0003,
}
TAIL_SURNAMES = [f"{a}{b}{c}{d}" for a in "BCDFGHKLMNPRSTVW" for b in "AEIOU" for c in "LNRTSMDK"
                 for d in ("SON", "MAN", "ER", "EY", "INS", "TON", "FORD", "LEY")]
SURNAMES = list(TOP_SURNAMES) + TAIL_SURNAMES
SURNAME_WEIGHTS = list(TOP_SURNAMES.values()) + [(1 - sum(TOP_SURNAMES.values())) / len(TAIL_SURNAMES)] * len(
    TAIL_SURNAMES)
GIVEN = ["JOHN", "MARY", "JAMES", "PATRICIA", "ROBERT", "JENNIFER", "MICHAEL", "LINDA", "DAVID", "ELIZABETH",
         "JOSÉ", "ZOË", "WEI", "FATIMA", "OLGA", "HANS"]
BATCH = 50_000


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def build(catalog: Catalog, n_studies: int, n_instances: int, n_patients: int, seed: int) -> None:
    rng = random.Random(seed)
    now = time.time()
    t0 = time.perf_counter()
    patients = []
    for p in range(1, n_patients + 1):
        patients.append({
            "id": p, "patient_id": f"P{p:07d}", "issuer": "",
            "patient_name": f"{rng.choices(SURNAMES, SURNAME_WEIGHTS)[0]}^{rng.choice(GIVEN)}",
            "birth_date": f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            "sex": rng.choice("MF"),
        })
    start = 18262  # 2020-01-01 as days since epoch; dates spread over 5 years
    studies, keys, series = [], [], []
    for s in range(1, n_studies + 1):
        patient = patients[rng.randrange(n_patients)]
        day = time.gmtime((start + rng.randrange(5 * 365)) * 86400)
        main = _weighted(rng, STUDY_MODALITY_WEIGHTS)
        studies.append({
            "id": s, "study_uid": f"{ROOT}.1.{s}", "patient_pk": patient["id"],
            "patient_name": patient["patient_name"], "study_date": time.strftime("%Y%m%d", day),
            "study_time": f"{rng.randint(6, 21):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
            "accession_number": f"A{rng.randrange(10**9):09d}", "study_id": str(s),
            "study_description": rng.choice(DESCRIPTIONS[main]), "referring_physician": f"{rng.choice(TAIL_SURNAMES)}^DR",
            "created_at": now, "updated_at": now,
        })
        keys.append({"key_id": f"k{s:031d}", "study_uid": f"{ROOT}.1.{s}", "wrapped_site": b"x" * 60,
                     "wrapped_recovery": b"y" * 60, "created_at": now})
        for n in range(1, rng.randint(1, 5) + 1):
            modality = main if rng.random() < 0.9 else rng.choice(list(SOP_CLASS))
            series.append({
                "id": len(series) + 1, "series_uid": f"{ROOT}.2.{s}.{n}", "study_pk": s, "modality": modality,
                "series_number": str(n), "series_description": f"{modality} SERIES {n}", "body_part": "CHEST",
                "_weight": SERIES_SIZE_WEIGHT[modality] * rng.lognormvariate(0, 0.5),
            })
    # Share the instances out in proportion to the weights, at least one per series.
    total_weight = sum(se["_weight"] for se in series)
    spare = n_instances - len(series)
    for se in series:
        se["_count"] = 1 + int(spare * se["_weight"] / total_weight)
    short = n_instances - sum(se["_count"] for se in series)
    for i in range(short):
        series[i % len(series)]["_count"] += 1
    with catalog.write() as conn:
        conn.execute(insert(t.patients), patients)
        conn.execute(insert(t.studies), studies)
        conn.execute(insert(t.study_keys), keys)
        conn.execute(insert(t.series), [{k: v for k, v in se.items() if not k.startswith("_")} for se in series])
    print(f"  patients/studies/series: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    instances, versions, pk = [], [], 0

    def flush() -> None:
        with catalog.write() as conn:
            conn.execute(insert(t.instances), instances)
            conn.execute(insert(t.versions), versions)
        instances.clear()
        versions.clear()

    for se in series:
        study_pk = se["study_pk"]
        for n in range(1, se["_count"] + 1):
            pk += 1
            digest = hashlib.sha256(pk.to_bytes(8, "big")).hexdigest()
            instances.append({
                "id": pk, "sop_instance_uid": f"{ROOT}.3.{se['id']}.{n}", "series_pk": se["id"],
                "sop_class_uid": SOP_CLASS[se["modality"]], "instance_number": str(n),
            })
            versions.append({
                "instance_pk": pk, "version": 1, "object_id": digest, "sha256": digest, "dataset_sha256": digest,
                "size_original": 500_000, "size_stored": 300_000,
                "transfer_syntax_uid": "1.2.840.10008.1.2.4.80" if pk % 5 == 0 else "1.2.840.10008.1.2.1",
                "codec": "zstd", "key_id": f"k{study_pk:031d}", "received_at": now, "source": "bench",
            })
            if len(instances) >= BATCH:
                flush()
                print(f"  instances: {pk:,} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if instances:
        flush()
    with catalog.write() as conn:
        conn.exec_driver_sql("ANALYZE")  # planner statistics, as a running archive would have
    print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


RETURN_KEYS = {k: "" for k in (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)}


def _samples(catalog: Catalog, rng: random.Random) -> tuple[dict[str, list[Query]], dict[str, list[Query]]]:
    """(the study-level mix the target is about, other levels for information)."""
    with catalog.read() as conn:
        studies = conn.execute(text(
            "SELECT s.study_uid, s.study_date, s.accession_number, s.patient_name, p.patient_id"
            " FROM studies s JOIN patients p ON p.id = s.patient_pk"
        )).all()
        series = conn.execute(text(
            "SELECT s.study_uid, se.series_uid FROM series se JOIN studies s ON s.id = se.study_pk"
        )).all()

    def day_plus(date: str, days: int) -> str:
        stamp = time.mktime(time.strptime(date, "%Y%m%d")) + days * 86400 + 3600
        return time.strftime("%Y%m%d", time.localtime(stamp))

    def study(params: dict[str, str]) -> Query:
        return Query("STUDY", {**RETURN_KEYS, **params})

    picks = [rng.choice(studies) for _ in range(1000)]
    mix = {
        "patient_id": [study({"PatientID": s.patient_id}) for s in picks],
        "name_wildcard": [study({"PatientName": "SMI*"})]
        + [study({"PatientName": s.patient_name[:3] + "*"}) for s in picks],
        "date_day": [study({"StudyDate": s.study_date}) for s in picks],
        "date_week": [study({"StudyDate": f"{s.study_date}-{day_plus(s.study_date, 6)}"}) for s in picks],
        "accession": [study({"AccessionNumber": s.accession_number}) for s in picks],
        "study_uid": [study({"StudyInstanceUID": s.study_uid}) for s in picks],
        "modality_date": [
            study({"ModalitiesInStudy": rng.choice(["CT", "MR", "CR", "US"]),
                   "StudyDate": f"{s.study_date}-{day_plus(s.study_date, 6)}"})
            for s in picks
        ],
    }
    series_picks = [rng.choice(series) for _ in range(1000)]
    other = {
        "PATIENT by ID": [Query("PATIENT", {"PatientID": s.patient_id, "PatientName": ""}, root="PATIENT")
                          for s in picks],
        "STUDY +pat.counts": [study({"StudyDate": s.study_date, "NumberOfPatientRelatedInstances": ""})
                              for s in picks],
        "SERIES of study": [Query("SERIES", {"StudyInstanceUID": s.study_uid, "Modality": "",
                                             "NumberOfSeriesRelatedInstances": ""}) for s in picks],
        "IMAGE of series": [Query("IMAGE", {"StudyInstanceUID": s.study_uid, "SeriesInstanceUID": s.series_uid})
                            for s in series_picks],
        "IMAGE of study": [Query("IMAGE", {"StudyInstanceUID": s.study_uid}) for s in picks],
    }
    return mix, other


def _time(catalog: Catalog, kinds: dict[str, list[Query]], repeat: int,
          rng: random.Random) -> dict[str, dict[str, float]]:
    """Each query consumed to its last row, kinds interleaved; p50/p95/max per kind and overall."""
    for queries in kinds.values():  # warm up (page cache, statement cache)
        for query in queries[:3]:
            list(run_query(catalog, query))
    order = [(kind, i) for kind in kinds for i in range(repeat)]
    rng.shuffle(order)
    timings: dict[str, list[float]] = {kind: [] for kind in kinds}
    rows: dict[str, list[int]] = {kind: [] for kind in kinds}
    for kind, i in order:
        query = kinds[kind][i % len(kinds[kind])]
        started = time.perf_counter()
        n = 0
        for row in run_query(catalog, query):
            n += 1
            assert query.level == "PATIENT" or row["NumberOfStudyRelatedInstances"] != ""
        timings[kind].append((time.perf_counter() - started) * 1000)
        rows[kind].append(n)
    results = {}
    for kind, values in list(timings.items()) + [("overall", [v for vs in timings.values() for v in vs])]:
        counts = rows[kind] if kind in rows else [n for ns in rows.values() for n in ns]
        results[kind] = {"p50_ms": _pct(values, 0.5), "p95_ms": _pct(values, 0.95), "max_ms": max(values),
                         "rows_mean": statistics.mean(counts)}
    return results


def _table(title: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title:<20}{'rows':>8}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for kind, r in results.items():
        print(f"{kind:<20}{r['rows_mean']:>8.1f}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}{r['max_ms']:>10.2f}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def explain(catalog: Catalog, mix: dict[str, list[Query]], other: dict[str, list[Query]]) -> None:
    """The plans of the main queries and of the per-chunk queries behind computed attributes."""
    from dicomvault.catalog import query as q

    prefix = "EXPLAIN QUERY PLAN " if catalog.is_sqlite else "EXPLAIN "
    with catalog.read() as conn:
        dialect = conn.dialect

        def show(title: str, statement: object) -> None:
            sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            print(f"\n-- {title}")
            for row in conn.exec_driver_sql(prefix + sql):
                print("   ", row[-1])

        for kind, queries in list(mix.items()) + list(other.items())[2:]:
            filters = {k: v for k, v in queries[0].filters.items() if v}
            show(f"{kind} ({queries[0].level}): {filters}", statement_for(queries[0], dialect.name))
        pks = [r[0] for r in conn.execute(text("SELECT id FROM studies LIMIT 50"))]
        show("computed: counts, ModalitiesInStudy, SOPClassesInStudy (once per chunk of rows)",
             q._SERIES_OF_STUDIES.params(pks=pks))
        show("computed: SOP classes of series holding several (rare)", q._SERIES_CLASSES.params(pks=pks))
        show("computed: NumberOfPatientRelated* (once per chunk, when asked)", q._SERIES_OF_PATIENTS.params(pks=pks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicomvault-bench")
    parser.add_argument("--url", help="catalog URL instead of a cached SQLite file (built if empty)")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the cached catalog")
    parser.add_argument("--repeat", type=int, default=50, help="timed queries per kind")
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--no-other", action="store_true", help="skip the informational other-level queries")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()

    if args.url:
        url = args.url
        catalog = Catalog(url)
        with catalog.read() as conn:
            empty = conn.execute(text("SELECT count(*) FROM studies")).scalar() == 0
        if empty:
            build(catalog, args.studies, args.instances, args.patients, args.seed)
    else:
        name = f"cfind-v{DATA_VERSION}-{args.studies}s-{args.instances}i-{args.patients}p-seed{args.seed}.db"
        path = args.cache_dir / name
        done = path.with_suffix(".done")
        if args.rebuild or not done.exists():
            for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), done):
                stale.unlink(missing_ok=True)
            print(f"building {path} ...", file=sys.stderr)
            catalog = Catalog(f"sqlite:///{path}")
            build(catalog, args.studies, args.instances, args.patients, args.seed)
            catalog.barrier()
            catalog.close()
            done.write_text("ok\n")
        url = f"sqlite:///{path}"
        catalog = Catalog(url)

    rng = random.Random(args.seed + 1)
    mix, other = _samples(catalog, rng)
    if not args.no_explain and not args.json:
        explain(catalog, mix, other)
    results = _time(catalog, mix, args.repeat, rng)
    other_results = _time(catalog, other, max(10, args.repeat // 2), rng) if not args.no_other else {}
    ok = results["overall"]["p95_ms"] < TARGET_P95_MS
    with catalog.read() as conn:
        counts = {name: conn.execute(text(f"SELECT count(*) FROM {name}")).scalar()
                  for name in ("patients", "studies", "series", "instances")}
    where = url.split("@")[-1]
    if args.json:
        print(json.dumps({"catalog": counts, "url": where, "repeat": args.repeat, "results": results,
                          "other_levels": other_results, "target_p95_ms": TARGET_P95_MS, "pass": ok}, indent=2))
    else:
        print(f"\ncatalog: {counts}  ({where})")
        _table("study-level mix", results)
        print(f"target: study-level p95 < {TARGET_P95_MS:.0f} ms: {'PASS' if ok else 'FAIL'}")
        if other_results:
            _table("other (no target)", other_results)
    catalog.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
