"""Capacity planning (`dicomvault capacity`, /api/capacity), the ingest charts
(/api/ingest-history) and the RTO estimate (/api/rto).

The end-to-end test stores real studies of two modalities with DCMTK storescu into a running
`serve` and restores them into a DCMTK storescp. Growth and forecasts need receipts spread over
months, which ingest cannot fake: those tests write catalog rows with chosen receipt times
through the catalog's own indexing functions (Catalog.add_version / add_copies), in-process.
"""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import Vault, api_call, dcmtk, free_port, wait_until

from dicomvault.catalog import Catalog, InstanceAttributes, VersionRecord
from dicomvault.catalog import capacity as rollup
from dicomvault.catalog import retention
from dicomvault.config import ReplicaSiteSettings, RetentionRule, RetentionSettings, Settings
from dicomvault.jobs.capacity import YEAR_DAYS, capacity_report, ingest_history, rto_estimate

DAY = 86400.0
NOW = 1_780_000_000.0  # a fixed "now" (2026-05-28 UTC): the arithmetic below is exact


# --- in-process: rows with chosen receipt times --------------------------------------------------

def _settings(catalog: Catalog, root: Path, retention_settings: RetentionSettings | None = None) -> Settings:
    return Settings(base_dir=root, catalog_url=catalog.url, primary_site_url=f"file://{root}",
                    site_key_file=root / "k", recovery_public_key_file=root / "r",
                    replicas=(ReplicaSiteSettings("offsite", "s3://bucket/prefix"),),
                    retention=retention_settings or RetentionSettings())


def _index(catalog: Catalog, study: str, modality: str, received_at: float, count: int, original: int, stored: int,
           offsite: str = "verified") -> None:
    """``count`` instances of one study (one series) received at ``received_at``, through the
    catalog's ingest functions; the off-site copy verified or still ``owed``."""
    day = datetime.fromtimestamp(received_at, timezone.utc).strftime("%Y%m%d")
    with catalog.write() as conn:
        catalog.add_study_key(conn, study, f"k{study}", b"s", b"r")
        for n in range(count):
            uid = f"{study}.1.{n}"
            a = InstanceAttributes(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid=study,
                                   series_uid=f"{study}.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
                                   patient_id=f"P{study}", study_date=day, modality=modality)
            r = VersionRecord(sop_instance_uid=uid, version=0, object_id=f"obj{uid}", sha256="a" * 64,
                              dataset_sha256=f"d{uid}", size_original=original, size_stored=stored,
                              transfer_syntax_uid=a.transfer_syntax_uid, codec="zstd", key_id=f"k{study}",
                              received_at=received_at, source="test")
            catalog.add_version(conn, a, r)
            catalog.add_copies(conn, r.object_id, stored, received_at, ["offsite"])
    if offsite == "verified":
        with sqlite3.connect(catalog.url.split("///", 1)[1]) as db:  # as the replication committer would
            db.execute("UPDATE copies SET state = 'verified', verified_at = ? WHERE site = 'offsite'", (received_at,))


@pytest.fixture
def known(tmp_path: Path) -> Catalog:
    """CT: 10 instances 5 days ago (1000 -> 400 bytes); MR: 20 instances 60 days ago (300 -> 200)."""
    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite3")
    _index(catalog, "1.2.3.1", "CT", NOW - 5 * DAY, 10, 1000, 400)
    _index(catalog, "1.2.3.2", "MR", NOW - 60 * DAY, 20, 300, 200)
    yield catalog
    catalog.close()


def _fake_disk(total: int, free: int):  # noqa: ANN202 - shutil.disk_usage's shape
    return lambda _path: shutil._ntuple_diskusage(total, total - free, free)  # type: ignore[attr-defined]


def test_growth_forecast_and_days_until_full_on_known_rows(known: Catalog, tmp_path: Path) -> None:
    report = capacity_report(known, _settings(known, tmp_path), now=NOW, disk_usage=_fake_disk(10**9, 8000))
    assert report["by_modality"] == [
        {"modality": "CT", "instances": 10, "bytes_original": 10000, "bytes_stored": 4000, "ratio": 2.5},
        {"modality": "MR", "instances": 20, "bytes_original": 6000, "bytes_stored": 4000, "ratio": 1.5}]
    assert report["growth"]["30d"] == {"instances_per_day": round(10 / 30, 3), "bytes_stored_per_day": round(4000 / 30, 1)}
    assert report["growth"]["90d"] == {"instances_per_day": round(30 / 90, 3), "bytes_stored_per_day": round(8000 / 90, 1)}
    rate = round(4000 / 30, 1)
    primary, offsite = report["sites"]
    assert primary["site"] == "primary" and primary["bytes_stored"] == 8000
    assert (primary["capacity_bytes"], primary["free_bytes"]) == (10**9, 8000)
    assert primary["days_until_full"] == round(8000 / rate, 1)  # 60.0 days at 133.3 bytes a day
    # retention disabled: nothing expires, every new byte stays
    assert primary["forecast_bytes"] == {f"{h}y": int(8000 + rate * h * YEAR_DAYS) for h in (1, 3, 5)}
    # an S3 site cannot say how much room it has
    assert offsite == {**offsite, "site": "offsite", "bytes_stored": 8000, "capacity_bytes": None, "free_bytes": None,
                       "days_until_full": None}


def test_a_site_still_owed_copies_holds_only_what_was_verified(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite3")
    _index(catalog, "1.2.4.1", "CT", NOW - DAY, 4, 1000, 500)
    _index(catalog, "1.2.4.2", "CT", NOW - DAY, 6, 1000, 500, offsite="owed")  # the backlog: not yet copied
    sites = {s["site"]: s for s in capacity_report(catalog, _settings(catalog, tmp_path), now=NOW)["sites"]}
    assert (sites["primary"]["bytes_stored"], sites["offsite"]["bytes_stored"]) == (5000, 2000)
    catalog.close()


def test_retention_rules_shrink_the_forecast(known: Catalog, tmp_path: Path) -> None:
    """A default of "1y" (enabled): every existing study expires within the year, and new data is
    kept one year at most; without rules (or with retention disabled) everything stays."""
    keep_all = _settings(known, tmp_path, RetentionSettings(enabled=True))
    one_year = _settings(known, tmp_path, RetentionSettings(enabled=True, default="1y"))
    not_enabled = _settings(known, tmp_path, RetentionSettings(enabled=False, default="1y"))
    forecasts = {}
    for name, settings in (("keep", keep_all), ("1y", one_year), ("off", not_enabled)):
        retention.refresh(known, settings.retention)
        forecasts[name] = capacity_report(known, settings, now=NOW)["sites"][0]["forecast_bytes"]
    rate = round(4000 / 30, 1)
    assert forecasts["keep"] == forecasts["off"] == {f"{h}y": int(8000 + rate * h * YEAR_DAYS) for h in (1, 3, 5)}
    # both studies (5 and 60 days old) are past their keep-until day within a year: all 8000 bytes go
    assert forecasts["1y"] == {f"{h}y": int(rate * YEAR_DAYS) for h in (1, 3, 5)}
    assert forecasts["1y"]["5y"] < forecasts["keep"]["5y"]

    # a rule for CT only (the one study of the last 30 days): new data follows it; MR stays forever
    ct_rule = RetentionSettings(enabled=True, rules=(RetentionRule(name="ct", modality=("CT",), keep="1y"),))
    retention.refresh(known, ct_rule)
    ct = capacity_report(known, _settings(known, tmp_path, ct_rule), now=NOW)["sites"][0]["forecast_bytes"]
    assert ct["5y"] == int(8000 - 4000 + rate * YEAR_DAYS)

    # a hold keeps its study whatever the rules say
    with known.write() as conn:
        conn.exec_driver_sql("INSERT INTO legal_holds (scope, target, reason, actor, created_at) "
                             "VALUES ('study', '1.2.3.1', 'court', 'test', 0)")
    held = capacity_report(known, _settings(known, tmp_path, ct_rule), now=NOW)["sites"][0]["forecast_bytes"]
    assert held["5y"] == int(8000 + rate * YEAR_DAYS)


def test_ingest_history_buckets_and_bad_range(known: Catalog) -> None:
    daily = ingest_history(known, "30d", now=NOW)
    assert daily["bucket_seconds"] == 86400 and len(daily["points"]) == 30
    assert [p["instances"] for p in daily["points"]] == [0] * 24 + [10] + [0] * 5  # 5 days ago; MR is older
    assert daily["points"][24] == {"t": (NOW // DAY - 5) * DAY, "instances": 10, "bytes": 10000}
    _index(known, "1.2.3.3", "CT", NOW - 3 * 3600 - 1, 2, 50, 20)
    hourly = ingest_history(known, "24h", now=NOW)
    assert hourly["range"] == "24h" and len(hourly["points"]) == 24
    assert sum(p["instances"] for p in hourly["points"]) == 2 and sum(p["bytes"] for p in hourly["points"]) == 100
    (busy,) = [p for p in hourly["points"] if p["instances"]]
    assert busy["t"] <= NOW - 3 * 3600 - 1 < busy["t"] + 3600
    for bad in ("7d", "", "24h; DROP TABLE versions"):
        with pytest.raises(ValueError, match="range=24h"):
            ingest_history(known, bad, now=NOW)


def _rollups(conn) -> list:  # noqa: ANN001
    return [sorted(tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table}"))
            for table in ("capacity_daily", "capacity_studies")]


def test_the_rollups_follow_deletions_and_equal_a_recount(known: Catalog) -> None:
    with known.read() as conn:
        kept = _rollups(conn)
    assert kept[1] == [("1.2.3.1", 10, 10, 10000, 4000), ("1.2.3.2", 20, 20, 6000, 4000)]
    with known.write() as conn:
        rollup.rebuild_rollup(conn)
        assert _rollups(conn) == kept
        pks = [r[0] for r in conn.exec_driver_sql("SELECT id FROM versions WHERE object_id LIKE 'obj1.2.3.1.%'")]
        rollup.forget_versions(conn, pks[:4])
    with known.read() as conn:
        ct = [m for m in rollup.by_modality(conn) if m.modality == "CT"][0]
        assert (ct.instances, ct.versions, ct.bytes_original, ct.bytes_stored) == (6, 6, 6000, 2400)
        assert _rollups(conn)[1][0] == ("1.2.3.1", 6, 6, 6000, 2400)
    with known.write() as conn:  # the whole study goes: its rows go
        pks = [r[0] for r in conn.exec_driver_sql("SELECT id FROM versions WHERE object_id LIKE 'obj1.2.3.1.%'")]
        rollup.forget_versions(conn, pks[4:])
    with known.read() as conn:
        assert [m.modality for m in rollup.by_modality(conn)] == ["MR"]
        assert [r[0] for r in _rollups(conn)[1]] == ["1.2.3.2"]


# --- a real serve: DCMTK storescu in, DCMTK storescp out -----------------------------------------

def _make(template: Path, dest: Path, modality: str, studies: int, per_study: int) -> list[Path]:
    source = pydicom.dcmread(template)
    made = []
    for _ in range(studies):
        study, series = generate_uid(), generate_uid()
        for n in range(per_study):
            ds = copy.deepcopy(source)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.Modality, ds.InstanceNumber = modality, n + 1
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = dest / f"{modality}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            made.append(path)
    return made


def test_numbers_from_a_running_serve_match_the_stored_files_and_rto_follows_a_restore(
        running_vault: Vault, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    vault = running_vault
    files = tmp_path / "send"
    files.mkdir()
    sent = {"CT": _make(Path(get_testdata_file("CT_small.dcm")), files, "CT", 2, 3),
            "MR": _make(Path(get_testdata_file("MR_small.dcm")), files, "MR", 1, 4)}
    run = subprocess.run([dcmtk("storescu"), "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port),
                          *map(str, sent["CT"] + sent["MR"])], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    vault.wait_settled()
    token = vault.api_token()
    wait_until(lambda: sum(m["instances"] for m in vault.api("/api/capacity")["by_modality"]) == 10,
               what="10 instances in the capacity figures")

    # expected figures from the stored originals (`dicomvault get`, byte-exact) and the sealed objects
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        rows = db.execute("SELECT se.modality, st.study_uid, v.object_id FROM versions v "
                          "JOIN instances i ON i.id = v.instance_pk JOIN series se ON se.id = i.series_pk "
                          "JOIN studies st ON st.id = se.study_pk").fetchall()
    expected = {}
    for modality in ("CT", "MR"):
        out = tmp_path / f"get-{modality}"
        for study in {r[1] for r in rows if r[0] == modality}:
            vault.cli("get", study, "--out", str(out))
        originals = list(out.rglob("*.dcm")) or [p for p in out.rglob("*") if p.is_file()]
        stored = [vault.site_root() / "objects" / r[2][:2] / r[2][2:4] / r[2] for r in rows if r[0] == modality]
        expected[modality] = {"modality": modality, "instances": len(sent[modality]),
                              "bytes_original": sum(p.stat().st_size for p in originals),
                              "bytes_stored": sum(p.stat().st_size for p in stored)}
        assert len(originals) == len(sent[modality])
    api = vault.api("/api/capacity")
    cli = json.loads(vault.cli("capacity", "--json").stdout)
    for report in (api, cli):
        got = {m["modality"]: {k: m[k] for k in ("modality", "instances", "bytes_original", "bytes_stored")}
               for m in report["by_modality"]}
        assert got == expected
        for m in report["by_modality"]:
            assert m["ratio"] == round(m["bytes_original"] / m["bytes_stored"], 3)
    total_stored = sum(e["bytes_stored"] for e in expected.values())
    rate = round(total_stored / 30, 1)
    assert api["growth"]["30d"]["bytes_stored_per_day"] == rate
    (primary,) = api["sites"]
    assert primary["bytes_stored"] == total_stored
    disk = shutil.disk_usage(vault.site_root())
    assert primary["capacity_bytes"] == disk.total
    assert abs(primary["free_bytes"] - disk.free) < 256 * 2**20  # the same file system, a moment apart
    assert primary["days_until_full"] == round(primary["free_bytes"] / rate, 1)
    human = vault.cli("capacity").stdout
    assert "CT" in human and "MR" in human and "full in" in human

    hourly = vault.api("/api/ingest-history?range=24h")
    assert sum(p["instances"] for p in hourly["points"][-2:]) == 10  # this hour (or the last, at a turn)
    assert sum(p["bytes"] for p in hourly["points"]) == sum(e["bytes_original"] for e in expected.values())
    daily = vault.api("/api/ingest-history?range=30d")
    assert len(daily["points"]) == 30 and sum(p["instances"] for p in daily["points"]) == 10
    for bad in ("7d", "1y", ""):
        code, body = api_call(vault, f"/api/ingest-history?range={bad}", token)
        assert code == 400 and "range=24h" in body["error"], body
    with open(vault.root / "keys" / "api-tokens", "a") as handle:
        handle.write("viewer:viewer-token-0123456789abcdef:read\n")
    code, body = api_call(vault, "/api/capacity", "viewer-token-0123456789abcdef")
    assert code == 403 and body["needed"] == "operator", body

    rto = vault.api("/api/rto")["last_24h"]
    assert (rto["studies"], rto["instances"]) == (3, 10)
    assert rto["bytes"] == sum(e["bytes_original"] for e in expected.values())
    assert rto["seconds"] is None and rto["rate_bytes_per_second"] is None and "no restore" in rto["basis"]

    received = tmp_path / "pacs"
    received.mkdir()
    port = free_port()
    vault.add_peer("pacs", "PACS", port)
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", "-od", str(received), str(port)])
    try:
        wait_until(lambda: subprocess.run([dcmtk("echoscu"), "-aec", "PACS", "127.0.0.1", str(port)],
                                          capture_output=True).returncode == 0, what="storescp up")
        restore = vault.cli("restore", "--to", "pacs", "--json", check=False)
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    report = json.loads(restore.stdout)
    assert report["sent"] == 10, report
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        job_id, seconds = db.execute("SELECT id, seconds_sending FROM restore_jobs").fetchone()
        sent_bytes = db.execute("SELECT sum(size) FROM restore_items WHERE state = 'sent'").fetchone()[0]
    rto = vault.api("/api/rto")["last_24h"]
    assert seconds > 0 and rto["rate_bytes_per_second"] == round(sent_bytes / seconds, 1)
    assert rto["seconds"] == pytest.approx(rto["bytes"] / (sent_bytes / seconds), abs=0.06)
    assert f"id {job_id}" in rto["basis"] and "pacs" in rto["basis"]


def test_rto_comes_from_drills_when_no_restore_ran(known: Catalog) -> None:
    assert rto_estimate(known, now=NOW)["last_24h"]["rate_bytes_per_second"] is None
    with known.write() as conn:
        conn.exec_driver_sql("INSERT INTO drill_runs (site, started_at, finished_at, state, target, studies, "
                             "instances, bytes, seconds) VALUES ('primary', 1, 3, 'success', 'scratch', 1, 5, 5000, 2.0)")
    _index(known, "1.2.3.9", "CT", NOW - 3600, 3, 1000, 100)
    rto = rto_estimate(known, now=NOW)["last_24h"]
    assert (rto["studies"], rto["instances"], rto["bytes"]) == (1, 3, 3000)
    assert (rto["rate_bytes_per_second"], rto["seconds"]) == (2500.0, 1.2)
    assert "drill" in rto["basis"] and "primary->scratch" in rto["basis"]


def test_migration_0017_fills_the_rollups_of_an_existing_catalog(known: Catalog) -> None:
    from alembic import command
    from alembic.config import Config

    from dicomvault.catalog.db import MIGRATIONS_DIR

    with known.read() as conn:
        kept = _rollups(conn)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with known.write_engine.begin() as connection:  # back to the catalog before rollups...
        config.attributes["connection"] = connection
        command.downgrade(config, "0015")
    with known.read() as conn:
        assert "capacity_daily" not in {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")}
    url = known.url
    known.close()
    again = Catalog(url)  # ...and opening it migrates to head, filling them from the versions
    with again.read() as conn:
        assert _rollups(conn) == kept
    again.close()
