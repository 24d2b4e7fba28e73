"""DICOM Storage Commitment (push model) SCP: success only when the copy policy holds.

Real peers only: a pynetdicom requester that also listens for the N-EVENT-REPORT, DCMTK
storescu sending the instances, a real replica site on a tmpfs taken away (read-only) and
given back, and a real Orthanc acting as the PACS that asks for commitment over DICOM and
shows the result in its REST API. Nothing waits on wall time: every wait polls a condition.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]

from conftest import Vault, dcmtk, free_port, remount, wait_until
from orthanc import Orthanc, OrthancError, orthanc_factory  # noqa: F401

COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUESTER_AE = "MODALITY"


# --- helpers ----------------------------------------------------------------------------------


def make_instances(ct_small: Path, dest: Path, count: int) -> list[tuple[str, str]]:
    """``count`` CT instances of one new study in ``dest``; returns their (SOP Class, SOP Instance) UIDs."""
    ds = pydicom.dcmread(ct_small)
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    ds.PatientID = "SC-0001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    refs = []
    for i in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.save_as(dest / f"{i:04d}.dcm", enforce_file_format=True)
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return refs


def storescu(vault: Vault, folder: Path) -> None:
    run = subprocess.run([dcmtk("storescu"), "-aet", REQUESTER_AE, "-aec", vault.ae_title, "+sd", "127.0.0.1",
                          str(vault.dicom_port), str(folder)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"storescu failed: {run.stderr}\n--- vault log ---\n{vault.log()}"


def catalog(vault: Vault) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{vault.root / 'catalog.sqlite3'}?mode=ro", uri=True, timeout=30)


def copy_states(vault: Vault, sop_uids: list[str], site: str) -> dict[str, str | None]:
    """SOP Instance UID -> state of the copy of its latest version on ``site`` (None: no row)."""
    with catalog(vault) as db:
        result: dict[str, str | None] = {}
        for uid in sop_uids:
            row = db.execute(
                "SELECT c.state FROM instances i JOIN versions v ON v.instance_pk = i.id"
                " LEFT JOIN copies c ON c.object_id = v.object_id AND c.site = ?"
                " WHERE i.sop_instance_uid = ? ORDER BY v.version DESC LIMIT 1", (site, uid)).fetchone()
            result[uid] = row[0] if row else None
        return result


def commitment_status(vault: Vault) -> dict[str, Any]:
    return vault.status()["commitment"]


@dataclass
class ReceivedReport:
    event_type: int
    info: Dataset
    calling_ae: str
    roles: list[tuple[bool, bool]]  # (we act as SCU, we act as SCP) per accepted context
    observed: Any = None  # what the test's observer saw at the moment the report arrived

    @property
    def transaction_uid(self) -> str:
        return str(self.info.TransactionUID)

    @property
    def committed(self) -> list[tuple[str, str]]:
        return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                for i in self.info.get("ReferencedSOPSequence", [])]

    @property
    def failed(self) -> list[tuple[str, str, int]]:
        return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
                for i in self.info.get("FailedSOPSequence", [])]


@dataclass
class Requester:
    """A modality: sends N-ACTION as SCU and listens (127.0.0.1) for the N-EVENT-REPORT as the SCU of the class."""

    ae_title: str = REQUESTER_AE
    port: int = field(default_factory=free_port)
    observer: Any = None  # called when a report arrives, before it is answered
    reports: list[ReceivedReport] = field(default_factory=list)
    server: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        info = event.event_information
        roles = [(cx.as_scu, cx.as_scp) for cx in event.assoc.accepted_contexts]
        report = ReceivedReport(int(event.request.EventTypeID), info, str(event.assoc.requestor.ae_title).strip(),
                                roles, self.observer(info) if self.observer else None)
        with self.lock:
            self.reports.append(report)
        return 0x0000, None  # success, no Event Reply

    def start(self) -> Requester:
        ae = AE(ae_title=self.ae_title)
        # The vault requests the association and proposes the SCP role; we accept that (we are the SCU).
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def reports_for(self, transaction_uid: str) -> list[ReceivedReport]:
        with self.lock:
            return [r for r in self.reports if r.transaction_uid == transaction_uid]

    def request(self, vault: Vault, dataset: Dataset | None, action_type: int = 1) -> Dataset:
        """One N-ACTION on its own association; returns the response status dataset."""
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", vault.dicom_port, ae_title=vault.ae_title)
        assert assoc.is_established, f"association refused\n--- vault log ---\n{vault.log()}"
        try:
            status, _reply = assoc.send_n_action(dataset, action_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        finally:
            assoc.release()
        assert "Status" in status, f"no N-ACTION response\n--- vault log ---\n{vault.log()}"
        return status

    def commit(self, vault: Vault, refs: list[tuple[str, str]]) -> str:
        uid = generate_uid()
        status = self.request(vault, action_information(uid, refs))
        assert status.Status == 0x0000, f"N-ACTION refused: {status}\n--- vault log ---\n{vault.log()}"
        return uid


def action_information(transaction_uid: str | None, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    if transaction_uid is not None:
        ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


@pytest.fixture
def requester() -> Any:
    r = Requester().start()
    yield r
    r.stop()


def fast_commitment(vault: Vault, timeout_seconds: str = "3600") -> None:
    vault.set_config("commitment", "check_interval", "0.1")
    vault.set_config("commitment", "timeout_seconds", timeout_seconds)


# --- 1. success only once the off-site copy is verified -------------------------------------------


def test_success_only_after_offsite_copy_verified(vault: Vault, requester: Requester, ct_small: Path,
                                                  tmp_path: Path, tmpfs: Path) -> None:
    vault.cli("sites", "add", "off", f"file://{tmpfs}/replica")  # off-site by default
    fast_commitment(vault)
    vault.add_peer("modality", REQUESTER_AE, requester.port)
    refs = make_instances(ct_small, tmp_path / "in", 3)
    uids = [uid for _cls, uid in refs]
    # At the moment a report arrives, look at the vault's copies of the stored instances.
    requester.observer = lambda info: copy_states(vault, uids, "off")

    remount(tmpfs, "ro")  # the off-site copy cannot be made yet
    try:
        vault.start()
        storescu(vault, tmp_path / "in")
        unknown = (CTImageStorage, generate_uid())  # never sent to the vault
        main_tx = requester.commit(vault, refs + [unknown])
        # A second request, for the unknown instance alone, is decided at once. The evaluator
        # walks pending requests in arrival order, so when this probe's report is in, the main
        # request has been evaluated at least once while the off-site copy was missing.
        probe_tx = requester.commit(vault, [unknown])
        wait_until(lambda: requester.reports_for(probe_tx), timeout=60, what="the probe's report")
        (probe,) = requester.reports_for(probe_tx)
        assert probe.event_type == 2 and probe.failed == [(str(unknown[0]), unknown[1], 0x0112)], probe.info
        assert probe.committed == []

        assert set(copy_states(vault, uids, "off").values()) == {"owed"}, "the off-site copy must still be missing"
        assert requester.reports_for(main_tx) == [], "a report arrived before the off-site copy existed"
        wait_until(lambda: commitment_status(vault)["delivered"] == 1, timeout=30, what="the probe recorded delivered")
        status = vault.status()
        assert status["sites"]["off"]["reachable"] is False, status["sites"]["off"]
        assert status["commitment"]["pending"] == 1 and status["commitment"]["evaluating"] == 1, status["commitment"]
        assert status["commitment"]["delivered"] == 1, status["commitment"]
    finally:
        remount(tmpfs, "rw")

    wait_until(lambda: requester.reports_for(main_tx), timeout=90, what="the commitment report after replication")
    wait_until(lambda: commitment_status(vault)["delivered"] == 2, timeout=30, what="both reports recorded delivered")
    (report,) = requester.reports_for(main_tx)  # exactly one report for the transaction
    assert report.observed == {uid: "verified" for uid in uids}, f"report sent before off-site verification: {report.observed}"
    assert report.event_type == 2, "one instance failed, so the event type must be 2 (failures exist)"
    assert sorted(report.committed) == sorted(refs), report.info
    assert report.failed == [(str(unknown[0]), unknown[1], 0x0112)], report.info
    assert report.calling_ae == vault.ae_title, "the report must come from the vault's own AE title"
    # SCP/SCU role selection: the vault proposed the SCP role, so on our side we are the SCU.
    assert (True, False) in report.roles, report.roles
    assert len(requester.reports) == 2, [r.transaction_uid for r in requester.reports]

    status = vault.status()
    assert status["commitment"]["pending"] == 0 and status["commitment"]["undeliverable"] == 0, status["commitment"]
    assert status["audit"]["chain_ok"] is True
    audit = vault.cli("audit", "verify")
    assert audit.returncode == 0
    with catalog(vault) as db:
        actions = {(a, o) for a, o in db.execute(
            "SELECT action, outcome FROM audit_log WHERE action LIKE 'commitment-%'")}
    assert ("commitment-request", "accepted") in actions and ("commitment-report", "failures") in actions, actions


def test_replication_wakes_the_commitment_evaluator(vault: Vault, requester: Requester, ct_small: Path,
                                                    tmp_path: Path, tmpfs: Path) -> None:
    """The evaluator's safety-net poll is an hour here: a report that follows the off-site copy
    within the wait below can only come from replication waking it."""
    vault.cli("sites", "add", "off", f"file://{tmpfs}/replica")
    vault.set_config("commitment", "poll_seconds", "3600")
    vault.add_peer("modality", REQUESTER_AE, requester.port)
    refs = make_instances(ct_small, tmp_path / "in", 2)
    uids = [uid for _cls, uid in refs]
    remount(tmpfs, "ro")  # the off-site copy cannot be made yet
    try:
        vault.start()
        storescu(vault, tmp_path / "in")
        main_tx = requester.commit(vault, refs)
        # Decided at once; requests are evaluated in arrival order, so once the probe's report
        # is in, the main request was evaluated without its off-site copy and the evaluator
        # went back to sleep: nothing is stored or requested after this point.
        probe_tx = requester.commit(vault, [(CTImageStorage, generate_uid())])
        wait_until(lambda: requester.reports_for(probe_tx), timeout=60, what="the probe's report")
        assert set(copy_states(vault, uids, "off").values()) == {"owed"}
        assert requester.reports_for(main_tx) == []
    finally:
        remount(tmpfs, "rw")
    wait_until(lambda: set(copy_states(vault, uids, "off").values()) == {"verified"}, timeout=60,
               what="the off-site copies verified")
    wait_until(lambda: requester.reports_for(main_tx), timeout=60,
               what="the report, long before the hour's poll")
    (report,) = requester.reports_for(main_tx)
    assert report.event_type == 1 and sorted(report.committed) == sorted(refs), report.info


# --- 2. only the primary: the policy never holds, failures at the timeout ----------------------


def test_policy_never_met_fails_at_timeout_with_reason(vault: Vault, requester: Requester, ct_small: Path,
                                                       tmp_path: Path) -> None:
    fast_commitment(vault, timeout_seconds="1.5")
    vault.add_peer("modality", REQUESTER_AE, requester.port)
    vault.start()
    refs = make_instances(ct_small, tmp_path / "in", 2)
    storescu(vault, tmp_path / "in")
    tx = requester.commit(vault, refs)

    wait_until(lambda: requester.reports_for(tx), timeout=60, what="the failure report")
    (report,) = requester.reports_for(tx)
    assert report.event_type == 2
    assert report.committed == [], "nothing can be committed with one copy under a 2-copy policy"
    assert sorted(report.failed) == sorted((c, i, 0x0110) for c, i in refs), report.info
    with catalog(vault) as db:
        reasons = [r for (r,) in db.execute(
            "SELECT i.reason FROM commitment_items i JOIN commitment_requests r ON r.id = i.request_pk"
            " WHERE r.transaction_uid = ?", (tx,))]
        received, decided = db.execute(
            "SELECT received_at, decided_at FROM commitment_requests WHERE transaction_uid = ?", (tx,)).fetchone()
    assert len(reasons) == 2 and all("copy policy not met" in r and "0 of 1 off-site" in r for r in reasons), reasons
    assert decided - received >= 1.5, "instances short of the policy must wait for the timeout before failing"


# --- who may ask; undeliverable, then delivered after a restart (state survives) -------------


def test_unknown_requester_is_refused_and_audited(vault: Vault, requester: Requester, ct_small: Path,
                                                  tmp_path: Path) -> None:
    """Storage commitment is a peer's permission (access.py): an AE title that is no [peers]
    entry is answered 0124H (not authorized) with the reason, audited, and nothing is kept."""
    fast_commitment(vault)
    vault.start()
    refs = make_instances(ct_small, tmp_path / "in", 1)
    storescu(vault, tmp_path / "in")  # storing stays open to every AE
    status = requester.request(vault, action_information(generate_uid(), refs))
    assert status.Status == 0x0124, status
    assert "commit refused" in str(status.get("ErrorComment", "")), status
    assert commitment_status(vault)["pending"] == 0
    with catalog(vault) as db:
        assert db.execute("SELECT COUNT(*) FROM commitment_requests").fetchone()[0] == 0
        (row,) = db.execute("SELECT actor, subject, outcome FROM audit_log WHERE action = 'access-denied'").fetchall()
    assert row == (f"dicom:{REQUESTER_AE}", "commit", "denied")


def test_requester_removed_from_peers_is_undeliverable_until_configured(
        vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    late = Requester()  # a configured peer, not listening yet: its report waits
    fast_commitment(vault)
    vault.set_config("policy", "copies", "1")  # the primary alone satisfies this policy
    vault.set_config("policy", "offsite_copies", "0")
    configured = vault.config.read_text()
    vault.add_peer("modality", REQUESTER_AE, late.port)
    vault.start()
    refs = make_instances(ct_small, tmp_path / "in", 2)
    storescu(vault, tmp_path / "in")
    tx = late.commit(vault, refs)
    wait_until(lambda: commitment_status(vault)["failing_deliveries"] == 1, timeout=30, what="a failed delivery")
    vault.stop()

    vault.config.write_text(configured)  # the administrator removed the peer: nowhere to send the report
    vault.start()
    wait_until(lambda: commitment_status(vault)["undeliverable"] == 1, timeout=30, what="undeliverable in status")
    status = vault.status()
    assert status["commitment"]["undeliverable_ae_titles"] == [REQUESTER_AE]
    assert any("undeliverable" in alert for alert in status["alerts"]), status["alerts"]
    assert vault.echo(), "the server must keep serving"
    vault.stop()

    vault.add_peer("modality", REQUESTER_AE, late.port)
    late.start()
    try:
        vault.start()  # the request was persisted: the restarted server delivers it
        wait_until(lambda: late.reports_for(tx), timeout=60, what="the report after restart")
        (report,) = late.reports_for(tx)
        assert report.event_type == 1 and sorted(report.committed) == sorted(refs) and report.failed == []
        assert "FailedSOPSequence" not in report.info
        wait_until(lambda: commitment_status(vault)["delivered"] == 1, timeout=30, what="delivered recorded")
        assert commitment_status(vault)["undeliverable"] == 0
    finally:
        late.stop()


def test_report_retried_until_the_requester_listens(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    late = Requester()  # configured, but not listening yet
    fast_commitment(vault)
    vault.set_config("policy", "copies", "1")
    vault.set_config("policy", "offsite_copies", "0")
    vault.add_peer("modality", REQUESTER_AE, late.port)
    vault.start()
    refs = make_instances(ct_small, tmp_path / "in", 1)
    storescu(vault, tmp_path / "in")
    tx = late.commit(vault, refs)
    wait_until(lambda: commitment_status(vault)["failing_deliveries"] == 1, timeout=30, what="a failed delivery")
    status = commitment_status(vault)
    assert status["delivered"] == 0 and status["awaiting_delivery"] == 1, status
    assert "cannot associate" in (status["last_error"] or ""), status
    late.start()
    try:
        wait_until(lambda: late.reports_for(tx), timeout=60, what="the retried report")
        wait_until(lambda: commitment_status(vault)["delivered"] == 1, timeout=30, what="delivered recorded")
        assert len(late.reports_for(tx)) == 1 and late.reports_for(tx)[0].committed == refs
    finally:
        late.stop()


# --- 3. a real Orthanc as the requesting PACS -------------------------------------------------


def test_orthanc_receives_success_report(vault: Vault, orthanc_factory: Any, ct_small: Path, tmp_path: Path) -> None:
    pacs: Orthanc = orthanc_factory(aet="PACS")
    vault.cli("sites", "add", "off", f"file://{tmp_path / 'offsite'}")
    fast_commitment(vault)
    vault.add_peer("pacs", pacs.aet, pacs.dicom_port)
    vault.start()
    pacs.add_modality("dicomvault", vault.ae_title, "127.0.0.1", vault.dicom_port)

    refs = make_instances(ct_small, tmp_path / "study", 3)
    uploaded = [pacs.upload(p) for p in sorted((tmp_path / "study").iterdir())]
    (study_id,) = {u["ParentStudy"] for u in uploaded}
    try:
        result = pacs.store_to_modality("dicomvault", [study_id])
        assert result.get("FailedInstancesCount") == 0 and result.get("InstancesCount") == 3, result
        answer = pacs.storage_commitment("dicomvault", [study_id])
    except OrthancError as exc:
        raise AssertionError(f"{exc}\n--- vault log ---\n{vault.log()}") from None
    transaction = answer["ID"]

    def report() -> dict[str, Any]:
        return pacs.rest("GET", f"/storage-commitment/{transaction}")

    wait_until(lambda: report()["Status"] != "Pending", timeout=90, what="Orthanc's storage commitment report")
    got = report()
    assert got["Status"] == "Success", f"{got}\n--- vault log ---\n{vault.log()}\n--- Orthanc ---\n{pacs.log_tail()}"
    assert sorted((s["SOPClassUID"], s["SOPInstanceUID"]) for s in got["Success"]) == sorted(refs), got
    assert got["Failures"] == []
    # Success was only possible with the off-site copy verified.
    assert set(copy_states(vault, [uid for _c, uid in refs], "off").values()) == {"verified"}

    # An instance Orthanc never sent: Orthanc shows the failure with the vault's reason.
    missing_uid = generate_uid()
    answer = pacs.rest("POST", "/modalities/dicomvault/storage-commitment",
                       {"DicomInstances": [[CTImageStorage, missing_uid], list(refs[0])]})
    wait_until(lambda: pacs.rest("GET", f"/storage-commitment/{answer['ID']}")["Status"] != "Pending",
               timeout=60, what="Orthanc's second report")
    got = pacs.rest("GET", f"/storage-commitment/{answer['ID']}")
    assert got["Status"] == "Failure", got
    assert [(s["SOPClassUID"], s["SOPInstanceUID"]) for s in got["Success"]] == [refs[0]], got
    assert [(f["SOPInstanceUID"], f["FailureReason"]) for f in got["Failures"]] == [(missing_uid, 0x0112)], got
    assert commitment_status(vault)["delivered"] == 2


# --- 4. bad N-ACTIONs are refused with a status, and the server keeps serving -----------------


def test_bad_requests_are_refused_and_server_keeps_serving(vault: Vault, requester: Requester) -> None:
    vault.add_peer("modality", REQUESTER_AE, requester.port)  # a peer may ask: its bad requests get their status
    vault.start()
    refs = [(CTImageStorage, generate_uid())]
    no_uid = requester.request(vault, action_information(None, refs))
    assert no_uid.Status == 0x0115 and "Transaction UID" in no_uid.ErrorComment, no_uid
    empty = requester.request(vault, action_information(generate_uid(), []))
    assert empty.Status == 0x0115 and "Referenced SOP Sequence" in empty.ErrorComment, empty
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom lets us build it, with a warning
        not_a_uid = action_information("not a uid", refs)
    bad_uid = requester.request(vault, not_a_uid)
    assert bad_uid.Status == 0x0115, bad_uid
    twice = requester.request(vault, action_information(generate_uid(), refs + refs))
    assert twice.Status == 0x0115 and "twice" in twice.ErrorComment, twice
    wrong_action = requester.request(vault, action_information(generate_uid(), refs), action_type=2)
    assert wrong_action.Status == 0x0123, wrong_action
    nothing = requester.request(vault, None)
    assert nothing.Status == 0x0115, nothing

    with catalog(vault) as db:
        assert db.execute("SELECT COUNT(*) FROM commitment_requests").fetchone()[0] == 0, "a refused request was kept"
        refused = db.execute("SELECT COUNT(*) FROM audit_log WHERE action = 'commitment-request'"
                             " AND outcome = 'refused'").fetchone()[0]
    assert refused == 6
    assert vault.echo(), "the server must keep serving after bad requests"
    good = requester.request(vault, action_information(generate_uid(), refs))
    assert good.Status == 0x0000, good
    assert vault.process is not None and vault.process.poll() is None
    assert vault.cli("audit", "verify").returncode == 0


# --- configuration -----------------------------------------------------------------------------


def test_peers_and_commitment_sections_parse_and_refuse_bad_values(tmp_path: Path) -> None:
    from dicomvault.config import DEFAULT_CONFIG_TEMPLATE, ConfigError, load_settings

    path = tmp_path / "dicomvault.toml"
    path.write_text(DEFAULT_CONFIG_TEMPLATE + '\n[peers.pacs]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n')
    settings = load_settings(path)
    assert [(p.name, p.ae_title, p.host, p.port) for p in settings.peers] == [("pacs", "PACS", "127.0.0.1", 4242)]
    assert settings.commitment.timeout_seconds == 3600 and settings.commitment.check_interval == 1.0
    assert settings.commitment.poll_seconds == 10.0
    for extra, message in [
        ('\n[peers.x]\nae_title = "X"\nhost = "h"\nport = 0\n', "port"),
        ('\n[peers.x]\nae_title = "THIS_TITLE_IS_FAR_TOO_LONG"\nhost = "h"\nport = 1\n', "ae_title"),
        ('\n[peers.x]\nae_title = "X"\nhost = "h"\nport = 1\naet = "Y"\n', "unknown key"),
        ('\n[peers.x]\nae_title = "X"\nhost = "h"\nport = 1\n[peers.y]\nae_title = "X"\nhost = "h"\nport = 2\n',
         "both use AE title"),
    ]:
        path.write_text(DEFAULT_CONFIG_TEMPLATE + extra)
        with pytest.raises(ConfigError, match=message):
            load_settings(path)
    path.write_text(DEFAULT_CONFIG_TEMPLATE.replace("timeout_seconds = 3600", "timeout_seconds = -1"))
    with pytest.raises(ConfigError, match="timeout_seconds"):
        load_settings(path)


def test_copies_sent_to_a_pacs_do_not_count_towards_commitment(tmp_path: Path) -> None:
    """A dicom:// target is often the requesting PACS itself; counting it would let the PACS
    delete its own copy on our word while the archive holds only one."""
    from dicomvault.archive.copies import CopyPolicy, owed_sites
    from dicomvault.config import DEFAULT_CONFIG_TEMPLATE, load_settings
    from dicomvault.ingest.commitment import StorageCommitmentService

    path = tmp_path / "dicomvault.toml"
    path.write_text(DEFAULT_CONFIG_TEMPLATE
                    + '\n[sites.pacs]\nurl = "dicom://PACS@127.0.0.1:4242"\noffsite = true\n'
                    + f'\n[sites.nas]\nurl = "file://{tmp_path / "nas"}"\noffsite = true\n')
    settings = load_settings(path)
    policy = CopyPolicy.from_settings(settings)
    assert policy.sites == {"primary": False, "nas": True}
    assert policy.check(["primary", "pacs"]).met is False
    assert policy.check(["primary", "nas"]).met is True
    assert owed_sites(settings) == ["pacs", "nas"], "a PACS is still owed its copy; it only does not count"
    service = StorageCommitmentService(settings, catalog=None)  # type: ignore[arg-type]
    assert service.policy == policy, "commitment decides by the one copy policy"
