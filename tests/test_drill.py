"""`dicomvault drill`: studies restored from each site on its own, checked byte for byte, and
remembered; on real file sites (the primary and a NAS), a real Orthanc as the test PACS and
the schedule inside a real `dicomvault serve`."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from conftest import Vault, free_port, make_vault, wait_until
from orthanc import orthanc_factory  # noqa: F401 - fixture
from test_replication_file import drained
from test_restore import Made, dataset_bytes, empty_pacs, make_study, template  # noqa: F401 - fixture
from test_verify import flip_byte, object_files

STUDY_DATES = ("20190304", "20230517", "20240229")  # imported in this order: the last is the newest


def import_studies(vault: Vault, template: pydicom.Dataset, tmp_path: Path) -> list[list[Made]]:
    """Three studies of 2 series x 2 instances, one `import` each (so arrival order is known)."""
    studies = []
    for n, date in enumerate(STUDY_DATES):
        made = make_study(template, tmp_path / f"study{n}", f"DRILL{n}", datetime.strptime(date, "%Y%m%d"),
                          series=2, per_series=2)
        vault.cli("import", str(tmp_path / f"study{n}"))
        studies.append(made)
    return studies


def with_nas(vault: Vault, template: pydicom.Dataset, tmp_path: Path) -> tuple[Path, list[list[Made]]]:
    """The studies on the primary and, copied and verified by a running `serve`, on a NAS."""
    nas = tmp_path / "nas"
    vault.cli("sites", "add", "nas", f"file://{nas}", "--onsite")
    studies = import_studies(vault, template, tmp_path)
    vault.start()
    wait_until(lambda: drained(vault, "nas", 12), timeout=60, what="12 verified copies on the NAS")
    return nas, studies


def drill(vault: Vault, *args: str) -> tuple[int, dict]:
    proc = vault.cli("drill", "--json", *args, check=False)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_site(report: dict) -> dict[str, dict]:
    return {site["site"]: site for site in report["sites"]}


def drill_audit(vault: Vault) -> list[tuple[str, str, dict]]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        rows = db.execute("SELECT subject, outcome, detail FROM audit_log WHERE action = 'drill' "
                          "ORDER BY id").fetchall()
    return [(subject, outcome, json.loads(detail)) for subject, outcome, detail in rows]


def test_drill_from_both_sites_restores_every_study_and_status_remembers_it(
        vault: Vault, template: pydicom.Dataset, tmp_path: Path) -> None:
    _, studies = with_nas(vault, template, tmp_path)

    code, report = drill(vault, "--random", "2", "--date", STUDY_DATES[0])

    assert code == 0, report
    sites = by_site(report)
    assert set(sites) == {"primary", "nas"}
    for name, result in sites.items():
        assert result["state"] == "success" and result["failures"] == [], (name, result)
        assert (result["studies"], result["instances"]) == (3, 12)
        assert result["bytes"] == sum(m.path.stat().st_size for study in studies for m in study)
        why = {pick["study_uid"]: pick["why"] for pick in result["picks"]}
        assert why[studies[-1][0].study_uid][0] == "newest"
        assert f"date:{STUDY_DATES[0]}" in why[studies[0][0].study_uid]
        assert sorted(why) == sorted(study[0].study_uid for study in studies)
    assert not (vault.root / "drill").exists(), "the scratch folder with plaintext images must be removed"

    status = vault.status()
    drills = status["drills"]
    for name in ("primary", "nas"):
        last = drills["sites"][name]["last_success"]
        assert (last["studies"], last["instances"], last["run_id"]) == (3, 12, sites[name]["run_id"])
        assert ", 3 studies, 12 instances," in last["summary"]
    assert drills["alerts"] == [] and status["alerts"] == [], status["alerts"]
    assert not any(r["code"].startswith("drill-") for r in status["protection"]["reasons"]), status["protection"]
    api = vault.api("/api/drills")
    assert sorted(run["site"] for run in api["runs"]) == ["nas", "primary"]
    assert all(run["state"] == "success" for run in api["runs"])
    assert [(subject, outcome) for subject, outcome, _ in drill_audit(vault)] == [("primary", "success"),
                                                                                   ("nas", "success")]
    assert vault.cli("audit", "verify").returncode == 0


def test_a_damaged_copy_fails_that_sites_drill_only_and_names_the_object(
        vault: Vault, template: pydicom.Dataset, tmp_path: Path) -> None:
    nas, _ = with_nas(vault, template, tmp_path)
    damaged, lost = object_files(nas)[3], object_files(nas)[7]
    flip_byte(damaged, 900)
    lost.unlink()

    code, report = drill(vault, "--random", "5")  # more than there are: every study is drilled

    assert code == 2, report
    sites = by_site(report)
    assert sites["primary"]["state"] == "success" and sites["primary"]["instances"] == 12
    nas_result = sites["nas"]
    assert nas_result["state"] == "failure" and nas_result["instances"] == 10
    problems = {f["object"]: f["problem"] for f in nas_result["failures"]}
    assert problems.keys() == {damaged.name, lost.name}
    assert problems[damaged.name].startswith("damaged:") and problems[lost.name].startswith("missing:")

    status = vault.status()
    assert not status["ok"]
    (alert,) = [a for a in status["alerts"] if "restore drill" in a]
    assert "site nas FAILED" in alert and "dicomvault drill --site nas" in alert
    assert status["drills"]["sites"]["primary"]["last_run"]["state"] == "success"
    assert [outcome for subject, outcome, _ in drill_audit(vault) if subject == "nas"] == ["failure"]

    code, primary_only = drill(vault, "--site", "primary", "--random", "0")  # --site limits the drill
    assert code == 0 and [s["site"] for s in primary_only["sites"]] == ["primary"]
    assert len(primary_only["sites"][0]["picks"]) == 1


def test_a_date_without_a_study_or_an_unknown_site_is_refused_clearly(
        vault: Vault, template: pydicom.Dataset, tmp_path: Path) -> None:
    empty = vault.cli("drill", check=False)
    assert empty.returncode == 1 and "nothing to drill: the archive holds no study yet" in empty.stderr
    studies = import_studies(vault, template, tmp_path)

    for args, message in ((["--date", "19990101"], "no study dated 19990101 in the archive"),
                          (["--date", "20240230"], "--date must be a study date as YYYYMMDD"),
                          (["--site", "offsite"], "unknown site 'offsite'; readable sites: primary"),
                          (["--random", "-1"], "--random must be 0 or more")):
        proc = vault.cli("drill", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert drill_audit(vault) == []  # nothing was drilled, nothing recorded

    code, report = drill(vault, "--date", STUDY_DATES[1], "--random", "0", "--keep", str(tmp_path / "kept"))
    assert code == 0, report
    assert [pick["why"] for pick in report["sites"][0]["picks"]] == [["newest"], [f"date:{STUDY_DATES[1]}"]]
    kept = sorted((tmp_path / "kept" / "primary").rglob("*.dcm"))
    assert len(kept) == 2 * 4 and all(p.stat().st_mode & 0o077 == 0 for p in kept)  # plaintext: owner only
    originals = {m.path.read_bytes() for study in studies[1:] for m in study}
    assert {p.read_bytes() for p in kept} == originals


def test_drill_into_a_test_pacs_arrives_byte_exact(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory) -> None:  # noqa: F811
    vault = make_vault(tmp_path / "vault")
    studies = import_studies(vault, template, tmp_path)
    pacs = empty_pacs(orthanc_factory, vault)

    code, report = drill(vault, "--to", "pacs", "--random", "0", "--date", STUDY_DATES[0])

    assert code == 0, report
    (result,) = report["sites"]
    assert result["target"] == "pacs" and result["instances"] == 8
    for made in studies[0] + studies[-1]:
        (resource,) = pacs.lookup(made.sop_uid)
        assert dataset_bytes(pacs.instance_file(resource["ID"])) == dataset_bytes(made.path.read_bytes())
    assert all(not pacs.lookup(made.sop_uid) for made in studies[1])  # not picked, not sent
    assert not (vault.root / "drill").exists()

    vault.add_peer("down", "NOBODY", free_port())
    proc = vault.cli("drill", "--to", "down", check=False)
    assert proc.returncode == 1 and "cannot associate with down" in proc.stderr and "nothing was drilled" in proc.stderr
    proc = vault.cli("drill", "--to", "pacs", "--keep", str(tmp_path / "k"), check=False)
    assert proc.returncode == 1 and "choose one" in proc.stderr


def test_serve_runs_the_drill_on_its_schedule(vault: Vault, template: pydicom.Dataset, tmp_path: Path) -> None:
    import_studies(vault, template, tmp_path)
    vault.set_config("drill", "every", '"1s"')
    vault.set_config("drill", "random", "1")
    vault.start()

    def scheduled() -> list[dict]:
        runs = vault.status()["drills"]["sites"]["primary"]
        return [runs["last_success"]] if runs["last_success"] else []

    wait_until(lambda: scheduled(), timeout=60, what="a scheduled drill recorded")
    (run,) = scheduled()
    assert run["actor"] == "drill-scheduler" and run["studies"] == 2 and run["instances"] == 8
    vault.stop()
    assert "Traceback" not in vault.log()


@pytest.mark.parametrize(("key", "value", "message"), [("every", '"soon"', "[drill] every"),
                                                       ("random", "-2", "[drill] random"),
                                                       ("enabled", '"yes"', "[drill] enabled")])
def test_bad_drill_settings_are_refused_with_the_key(vault: Vault, key: str, value: str, message: str) -> None:
    vault.set_config("drill", key, value)
    proc = vault.cli("status", check=False)
    assert proc.returncode == 3 and message in proc.stderr, proc.stderr  # 3: status cannot judge
