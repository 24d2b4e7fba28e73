"""Planning and sending at hospital scale: a plan is written a batch of studies at a time and
read back a page at a time, so a whole-vault restore of millions of instances needs neither
their rows in memory nor one long write lock. These tests shrink the batch and page sizes so
a handful of studies crosses several of each, and check nothing about the order changes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from sqlalchemy import select

from conftest import Vault
from orthanc import orthanc_factory  # noqa: F401 - fixture
from pgserver import PostgresServer, postgres_server  # noqa: F401 - fixture
from test_catalog_postgres import use_catalog
from test_restore import Made, empty_pacs, make_study, study_arrival_order, template  # noqa: F401

from dicomvault.archive.core import Archive
from dicomvault.catalog import Catalog
from dicomvault.catalog import schema as t
from dicomvault.catalog.selection import Selection
from dicomvault.config import PeerSettings, load_settings
from dicomvault.jobs.restore import job as restore
from dicomvault.jobs.restore import plan as restore_plan

EVERYTHING = Selection.build(None, None, (), (), ())
PEER = PeerSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)


def import_studies(template: pydicom.Dataset, folder: Path, vault: Vault) -> list[list[Made]]:  # noqa: F811
    """Five studies imported out of urgency order; returned in the order a restore must send them."""
    now = datetime.now()
    made = {age: make_study(template, folder, f"P{age}", now - timedelta(hours=age), series, per_series)
            for age, series, per_series in ((24 * 400, 2, 2), (2, 2, 2), (24 * 30, 1, 2), (24 * 3, 2, 3), (5, 1, 3))}
    vault.cli("import", str(folder))
    return [made[age] for age in (2, 5, 24 * 3, 24 * 30, 24 * 400)]


@pytest.fixture
def studies(tmp_path: Path, template: pydicom.Dataset, vault: Vault) -> list[list[Made]]:  # noqa: F811
    return import_studies(template, tmp_path / "files", vault)


@pytest.fixture
def archive(vault: Vault) -> Iterator[Archive]:
    opened = Archive.open(load_settings(vault.config))
    yield opened
    opened.close()


def planned(vault: Vault, job_id: int) -> list[tuple[int, str, int]]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT position, sop_instance_uid, tier FROM restore_items WHERE job_id = ? "
                          "ORDER BY position", (job_id,)).fetchall()


def job_row(vault: Vault, job_id: int) -> tuple[str, int, int]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT state, total, total_bytes FROM restore_jobs WHERE id = ?", (job_id,)).fetchone()


def check_batched_plans(catalog: Catalog, studies: list[list[Made]], monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [m.sop_uid for study in studies for m in study]  # series 1 then 2, instances in number order
    plans = {}
    for batch in (10**9, 3):  # everything in one transaction; then fewer instances than most studies hold
        monkeypatch.setattr(restore_plan, "_PLAN_INSTANCES_PER_BATCH", batch)
        job_id = restore_plan.plan_job(catalog, kind="restore", peer=PEER, selection=EVERYTHING,
                                       ordering="urgency", options={}, actor="test")
        items = t.restore_items
        with catalog.read() as conn:
            plans[batch] = [tuple(r) for r in conn.execute(
                select(items.c.position, items.c.sop_instance_uid, items.c.tier)
                .where(items.c.job_id == job_id).order_by(items.c.position))]
            job = conn.execute(select(t.restore_jobs).where(t.restore_jobs.c.id == job_id)).one()
        assert (job.state, job.total) == ("active", len(expected))
        assert job.total_bytes == sum(m.path.stat().st_size for study in studies for m in study) > 0
    assert plans[3] == plans[10**9]
    assert [position for position, _, _ in plans[3]] == list(range(len(expected)))
    assert [uid for _, uid, _ in plans[3]] == expected
    tiers = [tier for _, _, tier in plans[3]]
    assert tiers == [0] * (len(studies[0]) + len(studies[1])) + [1] * len(studies[2]) + \
        [2] * (len(studies[3]) + len(studies[4]))


def test_a_plan_written_in_small_batches_is_the_urgency_order(
        archive: Archive, studies: list[list[Made]], monkeypatch: pytest.MonkeyPatch) -> None:
    check_batched_plans(archive.catalog, studies, monkeypatch)


def test_planning_on_postgresql_gives_the_same_order(
        postgres_server: PostgresServer, template: pydicom.Dataset, tmp_path: Path,  # noqa: F811
        vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    use_catalog(vault, postgres_server.create_database())
    made = import_studies(template, tmp_path / "files", vault)
    catalog = Catalog(load_settings(vault.config).catalog_url)
    try:
        assert catalog.url.startswith("postgresql")
        check_batched_plans(catalog, made, monkeypatch)
    finally:
        catalog.close()


DYING_PLANNER = """
import os, sys
from dicomvault.archive.core import Archive
from dicomvault.catalog import Catalog
from dicomvault.catalog import schema as t
from dicomvault.catalog.selection import Selection
from dicomvault.config import PeerSettings, load_settings
from dicomvault.jobs.restore import plan as restore_plan

restore_plan._PLAN_INSTANCES_PER_BATCH = 3
real, calls = restore_plan.select_instances, []

def dies_on_the_second_batch(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os._exit(9)  # the process is gone, as under kill -9: no exception handler runs
    return real(*args, **kwargs)

restore_plan.select_instances = dies_on_the_second_batch
from dicomvault.jobs.restore.service import plan_or_resume

archive = Archive.open(load_settings(sys.argv[1]))
plan_or_resume(archive, "restore", "urgency", PeerSettings("pacs", "PACS", "127.0.0.1", 104),
               Selection.build(None, None, (), (), ()), False, False, 1, None, "test")
"""


def test_a_planner_killed_midway_leaves_a_job_nobody_sends_and_the_next_request_plans_anew(
        vault: Vault, archive: Archive, studies: list[list[Made]]) -> None:
    vault.add_peer("pacs", "PACS", 104)
    total = sum(len(study) for study in studies)
    died = subprocess.run([sys.executable, "-c", DYING_PLANNER, str(vault.config)], capture_output=True, text=True,
                          timeout=120)
    assert died.returncode == 9, died.stderr
    (dead_job,) = restore_plan.recent_jobs(archive.catalog, lock_dir=restore_plan.status_lock_dir(archive.settings))
    assert job_row(vault, dead_job["id"])[0] == "planning"
    assert 0 < len(planned(vault, dead_job["id"])) < total  # the first batch was committed, the rest never came
    assert dead_job["state"] == "abandoned"  # on this host at once: the kernel dropped its planner's flock
    (alert,) = restore_plan.restore_alerts([dead_job])
    assert "planning stopped" in alert and "Run the same restore again" in alert
    # Another host sharing the catalog sees only the heartbeat: still planning, until it is stale.
    assert restore_plan.recent_jobs(archive.catalog)[0]["state"] == "planning"
    later = time.time() + restore_plan.HEARTBEAT_STALE + 1
    assert restore_plan.recent_jobs(archive.catalog, now=later)[0]["state"] == "abandoned"

    resumed = vault.cli("restore", "--resume", str(dead_job["id"]), check=False)
    assert resumed.returncode == 1 and "never completely planned" in resumed.stderr, resumed.stderr
    assert restore_plan.latest_job_for(archive.catalog, "restore", "pacs", EVERYTHING) is None

    from dicomvault.jobs.restore.service import plan_or_resume

    job_id, done = plan_or_resume(archive, "restore", "urgency", PEER, EVERYTHING, False, False, 1, None, "test")
    assert (job_id != dead_job["id"], done) == (True, False)
    assert job_row(vault, dead_job["id"])[0] == "superseded"
    assert job_row(vault, job_id)[:2] == ("active", total)
    assert [uid for _, uid, _ in planned(vault, job_id)] == [m.sop_uid for study in studies for m in study]


def test_sending_reads_the_plan_a_page_at_a_time_in_order(
        vault: Vault, archive: Archive, studies: list[list[Made]], orthanc_factory,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    pacs = empty_pacs(orthanc_factory, vault)
    peer = PeerSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.dicom_port)
    monkeypatch.setattr(restore, "PENDING_PAGE", 2)  # smaller than every study
    job_id = restore_plan.plan_job(archive.catalog, kind="restore", peer=peer, selection=EVERYTHING,
                                   ordering="urgency", options={}, actor="test")
    report = restore.RestoreRunner(archive, job_id, peer, associations=1, actor="test").run()
    total = sum(len(study) for study in studies)
    assert (report["state"], report["sent"], report["failed"], report["pending"]) == ("completed", total, 0, 0)
    assert report["this_run"]["sent"] == total  # acknowledgements counted as they come: nothing sent twice
    assert len(pacs.rest("GET", "/instances")) == total
    assert study_arrival_order(pacs) == [study[0].study_uid for study in studies]


def test_the_server_answers_a_restore_while_it_plans_and_refuses_the_same_request_twice(
        vault: Vault, archive: Archive, studies: list[list[Made]], orthanc_factory,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /api/restores must not wait for a whole vault's plan: the job's thread writes it
    (under the job's lock) while the request has already answered "planning"."""
    from dicomvault.jobs.restore.service import Conflict, RestoreService

    pacs = empty_pacs(orthanc_factory, vault)
    archive.settings = load_settings(vault.config)  # with the pacs peer empty_pacs added
    monkeypatch.setattr(restore_plan, "_PLAN_INSTANCES_PER_BATCH", 3)
    release, reached = threading.Event(), threading.Event()
    real = restore_plan.select_instances

    def held_at_the_second_batch(*args: object, **kwargs: object) -> object:
        if reached.is_set():
            assert release.wait(60), "the test never let planning go on"
        reached.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(restore_plan, "select_instances", held_at_the_second_batch)
    service = RestoreService(archive)
    try:
        answer = service.start({"to": "pacs", "associations": 1}, "api:test@127.0.0.1")
        total = sum(len(study) for study in studies)
        assert (answer["state"], answer["total"], answer["sent"]) == ("planning", total, 0)
        with pytest.raises(Conflict, match=f"job {answer['id']} with this selection is being planned"):
            service.start({"to": "pacs", "associations": 2}, "api:test@127.0.0.1")
        release.set()
        service.wait(answer["id"], 60)
        done = restore_plan.job_progress(archive.catalog, answer["id"])
        assert (done["state"], done["sent"], done["failed"]) == ("completed", total, 0)
        assert study_arrival_order(pacs) == [study[0].study_uid for study in studies]

        release.clear()
        reached.clear()
        stopped = service.start({"to": "pacs", "fresh": True}, "api:test@127.0.0.1")
        assert stopped["state"] == "planning" and stopped["id"] != answer["id"]
        assert service.stop(stopped["id"])
        release.set()
        service.wait(stopped["id"], 60)
        assert restore_plan.job_progress(archive.catalog, stopped["id"])["state"] == "superseded"
        assert len(pacs.rest("GET", "/instances")) == total  # nothing more was sent
    finally:
        release.set()
        service.close()
