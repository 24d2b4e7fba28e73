"""The operator's surface: find filters, get errors, status, /healthz and /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import Vault


@pytest.fixture
def two_studies(tmp_path: Path, ct_small: Path) -> list[Path]:
    files = []
    for patient_id, name, date, modality, accession in (
        ("PAT001", "Doe^Jane", "20240105", "CT", "ACC-1"),
        ("PAT002", "Roe^Richard", "20240620", "MR", "ACC-2"),
    ):
        ds = pydicom.dcmread(ct_small)
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality, ds.AccessionNumber = patient_id, name, date, modality, accession
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        (tmp_path / "incoming").mkdir(exist_ok=True)
        path = tmp_path / "incoming" / f"{patient_id}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _find(vault: Vault, *args: str) -> list[dict]:
    return json.loads(vault.cli("find", "--json", *args).stdout)


def test_import_then_find_by_each_filter(vault: Vault, two_studies: list[Path], tmp_path: Path) -> None:
    junk = tmp_path / "incoming" / "notes.txt"
    junk.write_text("not an image")
    report = json.loads(vault.cli("import", "--json", str(tmp_path / "incoming")).stdout)
    assert report["stored"] == 2
    assert [r["path"] for r in report["refused"]] == [str(junk)]
    assert "not a DICOM file" in report["refused"][0]["reason"]

    assert {r["patient_id"] for r in _find(vault)} == {"PAT001", "PAT002"}
    assert [r["patient_id"] for r in _find(vault, "--patient-id", "PAT00*", "--modality", "mr")] == ["PAT002"]
    assert [r["patient_name"] for r in _find(vault, "--patient-name", "doe*")] == ["Doe^Jane"]
    assert [r["accession_number"] for r in _find(vault, "--from", "20240101", "--to", "20240131")] == ["ACC-1"]
    assert [r["accession_number"] for r in _find(vault, "--accession", "ACC-2")] == ["ACC-2"]
    uid = pydicom.dcmread(two_studies[0]).StudyInstanceUID
    (row,) = _find(vault, "--study-uid", uid)
    assert row["instances"] == 1 and row["modalities"] == ["CT"]
    assert _find(vault, "--patient-id", "NOBODY") == []


def test_errors_are_one_line_and_non_zero(vault: Vault, tmp_path: Path) -> None:
    bad_date = vault.cli("find", "--from", "2024-01-01", check=False)
    assert bad_date.returncode != 0 and "YYYYMMDD" in bad_date.stderr
    missing = vault.cli("get", "1.2.3.4.5", "--out", str(tmp_path / "o"), check=False)
    assert missing.returncode != 0
    assert "nothing stored under UID 1.2.3.4.5" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.dcm"))
    no_config = vault.cli("status", check=False)  # sanity: the vault's config works
    assert no_config.returncode == 2 and no_config.stdout.startswith("UNPROTECTED")  # one site: one copy


def test_healthz_metrics_and_status(running_vault: Vault, two_studies: list[Path]) -> None:
    import subprocess

    from conftest import dcmtk

    sent = subprocess.run(
        [dcmtk("storescu"), "-aec", running_vault.ae_title, "127.0.0.1", str(running_vault.dicom_port), *map(str, two_studies)],
        capture_output=True, text=True, timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    running_vault.wait_settled()
    base = f"http://127.0.0.1:{running_vault.http_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
        assert response.status == 200
        assert json.load(response)["status"] == "ok"
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'dicomvault_ingest_instances_total{outcome="stored"} 2.0' in metrics
    assert "dicomvault_catalog_instances 2.0" in metrics
    assert "dicomvault_ingest_seconds_bucket" in metrics
    status = running_vault.status()
    assert status["counts"]["instances"] == 2 and status["counts"]["studies"] == 2
    assert 0 < status["bytes_stored"] < status["bytes_received"] * 1.2
    assert status["newest_ingest"] is not None and status["sites"]["primary"]["ok"] is True
    assert status["audit"]["chain_ok"] is True and status["alerts"] == []
    # Every image on one disk of one host: no alert fired, yet not protected ("ok" says so too).
    assert status["protection"]["state"] == "unprotected" and status["ok"] is False
    assert running_vault.api("/api/status")["counts"]["instances"] == 2


def test_an_unknown_command_or_option_is_one_usage_line_not_a_traceback(tmp_path: Path) -> None:
    for args in (["bogus"], ["find", "--no-such-option"]):
        run = subprocess.run([sys.executable, "-m", "dicomvault.cli", *args], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
        assert run.returncode == 2 and "Traceback" not in run.stderr and "╭" not in run.stderr, run.stderr
        assert "No such command 'bogus'" in run.stderr or "No such option: --no-such-option" in run.stderr


def test_help_names_the_config_sections_it_points_to(tmp_path: Path) -> None:
    """Help text says ``[peers.NAME]`` and ``[sites.NAME]``: the exact section an operator must
    write. Rich markup would read the brackets as a style tag and print "The  (name or AE
    title)", leaving the operator to guess what --to wants."""
    for args, section in ((["restore", "--help"], "[peers.NAME]"), (["export", "--help"], "[peers.NAME]"),
                          (["rebuild-index", "--help"], "[sites.NAME]"), (["replica-token", "--help"], "[replica_store]")):
        run = subprocess.run([sys.executable, "-m", "dicomvault.cli", *args], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
        assert run.returncode == 0 and section in run.stdout, (args, run.stdout)


@pytest.mark.parametrize("taken", ["http", "dicom"])
def test_serve_refuses_a_port_in_use_with_one_clear_line(vault: Vault, taken: str) -> None:
    """A port already bound is a start-up error naming the port, never a server half up (DICOM
    answering while HTTP died in its thread), and the port that was free is released again."""
    import socket

    port = vault.http_port if taken == "http" else vault.dicom_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        proc = vault.cli("serve", check=False, timeout=60)
    assert proc.returncode != 0
    label = "HTTP" if taken == "http" else "DICOM"
    assert f"cannot {'serve' if taken == 'http' else 'listen for'} {label}" in proc.stderr and str(port) in proc.stderr
    assert "Traceback" not in proc.stderr
    vault.start()  # both ports free again: it comes up and answers on HTTP at once
    with urllib.request.urlopen(f"http://127.0.0.1:{vault.http_port}/healthz", timeout=10) as response:
        assert response.status == 200
