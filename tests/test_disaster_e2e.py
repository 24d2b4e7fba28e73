"""The whole disaster, end to end, with real parts only.

A real Orthanc (the hospital's PACS) forwards several patients' studies to dicomvault, which
replicates them to an S3 site (a real moto server). Then the primary dicomvault's data
directory, with its keys and catalog, and the PACS's storage are destroyed. A new dicomvault
is built on a new directory from the S3 site and the offline recovery key alone, and
restores everything into a fresh, empty Orthanc. Every instance there must be byte-identical
to the original; the time the recovery took (the RTO) is printed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from conftest import make_vault, wait_until
from orthanc import Orthanc, orthanc_factory  # noqa: F401 - fixture
from s3server import S3Server, s3_server, unique_bucket_name  # noqa: F401 - fixture
from test_replication_file import drained
from test_replication_s3 import add_s3_site
from test_restore import Made, dataset_bytes, empty_pacs, make_study, template  # noqa: F401 - fixture


def forward(pacs: Orthanc, studies: list[list[Made]]) -> None:
    """The PACS sends whole studies to its archive destination, as after each exam."""
    ids = []
    for study in studies:
        (found,) = pacs.lookup(study[0].study_uid)
        ids.append(found["ID"])
    pacs.store_to_modality("vault", ids)


def test_losing_the_primary_site_and_the_pacs_then_rising_from_s3_and_the_recovery_key(
        tmp_path: Path, s3_server: S3Server, template: pydicom.Dataset,  # noqa: F811
        orthanc_factory: Callable[..., Orthanc], request: pytest.FixtureRequest) -> None:  # noqa: F811
    now = datetime.now()
    studies = [make_study(template, tmp_path / "exams" / f"p{n}-{age}", f"PAT{n}", now - timedelta(days=age),
                          series=2, per_series=3)
               for n, age in enumerate((0, 2, 30, 400, 1))]
    made = [m for study in studies for m in study]
    originals = {m.sop_uid: dataset_bytes(m.path.read_bytes()) for m in made}

    # --- the hospital before: PACS -> dicomvault -> S3 ----------------------------------------
    vault = make_vault(tmp_path / "vault")
    bucket = s3_server.make_bucket(unique_bucket_name(), object_lock=True)
    add_s3_site(vault, s3_server, bucket, "--option", "object_lock_days=1")
    pacs = orthanc_factory(aet="PACS")
    pacs.add_modality("vault", vault.ae_title, "127.0.0.1", vault.dicom_port)
    for m in made:
        pacs.upload(m.path)
    vault.start()
    request.addfinalizer(vault.kill)  # a failure before the disaster must not leave it running
    forward(pacs, studies[:3])
    wait_until(lambda: drained(vault, "offsite", 18), timeout=120, what="three studies on S3")
    vault.cli("snapshot")  # what `serve` does every [snapshots] every
    forward(pacs, studies[3:])  # after the last snapshot: the rebuild finds them by listing S3
    wait_until(lambda: drained(vault, "offsite", len(made)), timeout=120, what="every study on S3")
    recovery_key = tmp_path / "safe" / "recovery-key.pem"  # the copy kept offline since `init`
    recovery_key.parent.mkdir()
    shutil.copy(vault.root / "recovery-key.pem", recovery_key)

    # --- the disaster: the archive host and the PACS storage are gone ----------------------------
    vault.kill()
    shutil.rmtree(vault.root)  # catalog, objects, site key, recovery public key, config
    pacs.stop()
    shutil.rmtree(pacs.root)

    # --- the recovery: a new host, the S3 bucket and the recovery key ---------------------------
    started = time.monotonic()
    rebuilt = make_vault(tmp_path / "new-host")  # `dicomvault init`: fresh keys, to be replaced
    add_s3_site(rebuilt, s3_server, bucket, "--option", "object_lock_days=1")
    report = json.loads(rebuilt.cli("rebuild-index", "--from", "offsite", "--recovery-key", str(recovery_key),
                                    "--json").stdout)
    new_pacs = empty_pacs(orthanc_factory, rebuilt)
    restore = rebuilt.cli("restore", "--to", "pacs", "--json", check=False)
    rto = time.monotonic() - started
    print(f"\nRTO: {rto:.1f} s from a bare host to {len(made)} instances back in an empty PACS "
          f"(rebuild-index {report['total_seconds']} s)")

    assert report["keys_restored"] is True and report["unreadable_objects"] == []
    assert report["objects_after_snapshot"] == 12 and report["instances"] == len(made)
    assert report["copies_owed_to_primary"] == len(made)  # the new primary starts empty
    assert restore.returncode == 0, restore.stdout + restore.stderr
    job = json.loads(restore.stdout)
    assert (job["sent"], job["failed"], job["total"]) == (len(made), 0, len(made))
    received = new_pacs.rest("GET", "/instances")
    assert len(received) == len(made)
    for m in made:
        (resource,) = new_pacs.lookup(m.sop_uid)
        assert dataset_bytes(new_pacs.instance_file(resource["ID"])) == originals[m.sop_uid], m.sop_uid
    assert rebuilt.cli("audit", "verify").returncode == 0

    # `serve` copies the objects back onto the new primary in the background.
    rebuilt.start()
    try:
        wait_until(lambda: "refill_owed" not in rebuilt.status()["sites"]["primary"], timeout=120,
                   what="the primary refilled from S3")
        assert len([p for p in (rebuilt.site_root() / "objects").rglob("*") if p.is_file()]) == len(made)
        assert rebuilt.cli("verify", "--site", "primary", "--json", check=False).returncode == 0
    finally:
        rebuilt.stop()
