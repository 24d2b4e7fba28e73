"""Who may do what over DICOM (access.py, ingest/gate.py), against a real `serve`.

After `init`: C-ECHO and C-STORE from any AE; C-FIND, C-GET, C-MOVE and storage commitment
only for a [peers.NAME] with that permission, connecting from its host. Refusals are the
operation's 0124H status with a reason, and an audit row; nothing is sent or kept.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from conftest import Vault, dcmtk, free_port, make_vault, wait_until

NOT_AUTHORIZED = 0x0124


def denied_rows(vault: Vault) -> list[tuple[str, str, str]]:
    return vault.refusals()


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    return ds


def find(vault: Vault, calling: str, bind: str = "127.0.0.1") -> tuple[int, str, int]:
    """(final status, Error Comment, number of matches) of a Study Root C-FIND as ``calling``."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", vault.dicom_port, ae_title=vault.ae_title, bind_address=(bind, 0))
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_find(study_query(), StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    final = responses[-1][0]
    matches = sum(1 for status, _ in responses if status and status.Status in (0xFF00, 0xFF01))
    return final.Status, str(final.get("ErrorComment", "")), matches


@pytest.fixture(scope="module")
def stocked(tmp_path_factory: pytest.TempPathFactory, ct_small_module: Path) -> Vault:
    """A vault holding one study, with three peers: a viewer that may find and get, a PACS
    that may move, and one declared at another address (127.0.0.2)."""
    tmp = tmp_path_factory.mktemp("access")
    vault = make_vault(tmp / "vault")
    vault.add_peer("viewer", "VIEWER", free_port(), permissions=["find", "get"])
    vault.add_peer("pacs", "PACS", free_port(), permissions=["store", "move"])
    vault.add_peer("elsewhere", "ELSEWHERE", free_port(), permissions=["find"], host="127.0.0.2")
    vault.add_peer("subnet", "SUBNET", free_port(), permissions=["find"], host="127.0.0.2",
                   accept_from=["127.0.0.0/8"])
    with vault.config.open("a") as config:  # a viewer that only calls: no host, no port
        config.write('\n[peers.caller]\nae_title = "CALLER"\npermissions = ["find", "move"]\n'
                     'accept_from = ["127.0.0.1"]\n')
    vault.start()
    run = subprocess.run([dcmtk("storescu"), "-aet", "MODALITY", "-aec", vault.ae_title, "127.0.0.1",
                          str(vault.dicom_port), str(ct_small_module)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    wait_until(lambda: instance_count(vault) == 1, timeout=10, what="the stored instance indexed")
    yield vault
    vault.stop()


@pytest.fixture(scope="module")
def ct_small_module() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def instance_count(vault: Vault) -> int:
    db = sqlite3.connect(vault.root / "catalog.sqlite3")
    try:
        return db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        db.close()


def test_store_is_open_to_any_ae_by_default(stocked: Vault) -> None:
    # acknowledged means durable; the catalog row follows within the group commit's interval
    wait_until(lambda: instance_count(stocked) == 1, timeout=10, what="MODALITY's instance (no peer) indexed")


def test_find_by_an_unknown_ae_is_refused_with_a_reason_and_audited(stocked: Vault) -> None:
    before = len(denied_rows(stocked))
    status, comment, matches = find(stocked, "SNOOPER")
    assert (status, matches) == (NOT_AUTHORIZED, 0)
    assert comment.startswith("find refused: AE SNOOPER is not a [peers]"), comment
    rows = denied_rows(stocked)[before:]
    assert [(actor, subject) for actor, subject, _ in rows] == [("dicom:SNOOPER", "find")]
    assert "127.0.0.1" in rows[0][2]


def test_dcmtk_findscu_is_refused_by_default(stocked: Vault, tmp_path: Path) -> None:
    out = tmp_path / "rsp"
    out.mkdir()
    run = subprocess.run([dcmtk("findscu"), "-d", "-S", "-aec", stocked.ae_title, "-X", "-od", str(out),
                          "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                          "127.0.0.1", str(stocked.dicom_port)], capture_output=True, text=True, timeout=60)
    log = run.stdout + run.stderr
    assert "0x0124" in log and "find refused" in log, log[-2000:]
    assert list(out.glob("rsp*")) == [], "no identifier may leave"


def test_a_peer_finds_and_gets_what_it_may(stocked: Vault, ct_small_module: Path) -> None:
    status, _, matches = find(stocked, "VIEWER")
    assert (status, matches) == (0x0000, 1)

    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def get(calling: str) -> Dataset:
        ae = AE(ae_title=calling)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        assoc = ae.associate("127.0.0.1", stocked.dicom_port, ae_title=stocked.ae_title,
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established
        try:
            query = study_query()
            query.StudyInstanceUID = pydicom.dcmread(ct_small_module, stop_before_pixels=True).StudyInstanceUID
            return list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))[-1][0]
        finally:
            assoc.release()

    assert get("VIEWER").Status == 0x0000 and len(received) == 1
    refused = get("PACS")  # a peer, but without "get"
    assert refused.Status == NOT_AUTHORIZED and "lacks 'get'" in refused.ErrorComment, refused
    assert len(received) == 1, "nothing sent on a refused C-GET"


def test_move_is_refused_without_the_permission(stocked: Vault) -> None:
    def move(calling: str) -> Dataset:
        ae = AE(ae_title=calling)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", stocked.dicom_port, ae_title=stocked.ae_title)
        assert assoc.is_established
        try:
            return list(assoc.send_c_move(study_query(), "VIEWER", StudyRootQueryRetrieveInformationModelMove))[-1][0]
        finally:
            assoc.release()

    for calling in ("VIEWER", "INTRUDER"):
        answer = move(calling)
        assert answer.Status == NOT_AUTHORIZED and answer.ErrorComment.startswith("move refused"), answer
    # PACS may move: its request is decided on its merits (no StudyInstanceUID: A900).
    assert move("PACS").Status == 0xA900


def test_status_shows_who_may_do_what_and_the_refusals(stocked: Vault) -> None:
    find(stocked, "PROBE")
    access = stocked.status()["access"]
    assert access["anonymous"] == ["store"]
    assert access["peers"]["viewer"]["permissions"] == ["find", "get"]
    assert access["denied_last_24h"] >= 1 and access["alerts"] == []
    text = stocked.cli("status", check=False).stdout
    assert "unknown AEs may echo, store" in text and "refused in 24 h" in text, text


def test_a_peer_is_recognised_only_from_its_host(stocked: Vault) -> None:
    status, comment, _ = find(stocked, "ELSEWHERE")  # declared at 127.0.0.2, calling from 127.0.0.1
    assert status == NOT_AUTHORIZED
    assert "is [peers.elsewhere] but it connected from 127.0.0.1" in denied_rows(stocked)[-1][2]
    assert comment.startswith("find refused: AE ELSEWHERE is [peers.elsewhere]"), comment
    assert find(stocked, "ELSEWHERE", bind="127.0.0.2")[:1] == (0x0000,)
    assert find(stocked, "SUBNET")[:1] == (0x0000,), "accept_from widens where a peer may call from"


def test_a_peer_that_only_calls_needs_no_host_or_port(stocked: Vault) -> None:
    status, _, matches = find(stocked, "CALLER")
    assert (status, matches) == (0x0000, 1)
    ae = AE(ae_title="CALLER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", stocked.dicom_port, ae_title=stocked.ae_title)
    assert assoc.is_established
    try:
        query = study_query()
        query.StudyInstanceUID = "1.2.3"
        final = list(assoc.send_c_move(query, "CALLER", StudyRootQueryRetrieveInformationModelMove))[-1][0]
    finally:
        assoc.release()
    assert final.Status == 0xA801 and "has no host and port" in final.ErrorComment, final
    refused = stocked.cli("restore", "--to", "caller", check=False)
    assert refused.returncode != 0 and "[peers.caller] has no host" in refused.stderr + refused.stdout, refused


def test_anonymous_store_can_be_closed_too(tmp_path: Path, ct_small_module: Path) -> None:
    for engine in ("lean", "pynetdicom"):
        vault = make_vault(tmp_path / engine)
        vault.set_config("dicom", "engine", f'"{engine}"')
        vault.set_config("dicom", "anonymous", "[]")
        vault.add_peer("modality", "MODALITY", free_port(), permissions=["store"])
        vault.start()
        try:
            def store(calling: str, *files: Path) -> subprocess.CompletedProcess[str]:
                return subprocess.run([dcmtk("storescu"), "-d", "-nh", "-aet", calling, "-aec", vault.ae_title,
                                       "127.0.0.1", str(vault.dicom_port),
                                       *[str(f) for f in files or (ct_small_module,)]],
                                      capture_output=True, text=True, timeout=60)

            other = pydicom.dcmread(ct_small_module)
            other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            other.save_as(tmp_path / "other.dcm")
            refused = store("STRANGER", ct_small_module, tmp_path / "other.dcm")  # each answered, association goes on
            log = refused.stdout + refused.stderr
            assert log.count("0x0124") == 2 and "store refused: AE STRANGER" in log, log[-2000:]
            assert store("MODALITY").returncode == 0
            wait_until(lambda: instance_count(vault) == 1, timeout=10, what=f"only MODALITY's instance ({engine})")
            assert instance_count(vault) == 1, "the refused one was not stored"
            assert vault.echo(), "C-ECHO is always answered"
            assert [row[:2] for row in denied_rows(vault)] == [("dicom:STRANGER", "store")], engine
        finally:
            vault.stop()


def test_an_ae_outside_the_allow_list_is_rejected_and_audited(tmp_path: Path) -> None:
    vault = make_vault(tmp_path / "vault")
    vault.set_config("dicom", "allowed_calling_aets", '["MODALITY", "ECHOSCU"]')  # ECHOSCU: the readiness probe
    vault.start()
    try:
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", vault.dicom_port, ae_title=vault.ae_title)
        assert assoc.is_rejected
        wait_until(lambda: denied_rows(vault), timeout=10, what="the rejection's audit row")
        (actor, subject, detail), = denied_rows(vault)
        assert (actor, subject) == ("dicom:STRANGER", "associate") and "allowed_calling_aets" in detail
    finally:
        vault.stop()


@pytest.mark.parametrize("table, message", [
    ('permissions = ["read"]', "unknown permission(s) read"),
    ('permissions = "find"', "must be a list"),
    ('accept_from = ["10.0.0.300"]', "is not an address or network"),
    ('tls_subject = "pacs"', "certificate subject"),
    ('check_host = "yes"', "check_host must be true or false"),
])
def test_bad_peer_access_settings_are_refused(tmp_path: Path, table: str, message: str) -> None:
    refused_peer(tmp_path, f'[peers.pacs]\nae_title = "PACS"\nhost = "h"\nport = 104\n{table}\n', message)


@pytest.mark.parametrize("table, message", [
    ('[peers.v]\nae_title = "V"\npermissions = ["find"]\n', "has no host to check callers against"),
    ('[peers.v]\nae_title = "V"\naccept_from = ["10.0.0.5"]\n', "may ask for storage commitment"),
    ('[peers.v]\nae_title = "V"\nhost = "h"\npermissions = ["commit"]\n', "may ask for storage commitment"),
    ('[peers.v]\nae_title = "V"\nhost = ""\n', "needs host"),
])
def test_a_caller_only_peer_must_say_where_it_calls_from(tmp_path: Path, table: str, message: str) -> None:
    refused_peer(tmp_path, table, message)


def refused_peer(tmp_path: Path, table: str, message: str) -> None:
    from dicomvault.config import DEFAULT_CONFIG_TEMPLATE, ConfigError, load_settings

    path = tmp_path / "dicomvault.toml"
    path.write_text(DEFAULT_CONFIG_TEMPLATE + "\n" + table)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_settings(path)


def test_policy_decisions() -> None:
    from dicomvault.access import AccessPolicy
    from dicomvault.config import PeerSettings

    peers = [PeerSettings("pacs", "PACS", "127.0.0.1", 104, permissions=frozenset({"find"}),
                          tls_subject="CN=pacs.example, O=Hospital")]
    policy = AccessPolicy(peers, ["store"])
    assert policy.check("store", "ANYONE", "10.1.2.3").allowed
    assert not policy.check("find", "ANYONE", "10.1.2.3").allowed
    assert not policy.check("find", "PACS", "::ffff:127.0.0.1").allowed, "no client certificate"
    assert policy.check("find", "PACS", "::ffff:127.0.0.1", "o=hospital,cn=PACS.example").allowed
    assert not policy.check("find", "PACS", "127.0.0.1", "CN=intruder,O=Hospital").allowed
    assert not policy.check("get", "PACS", "127.0.0.1", "CN=pacs.example,O=Hospital").allowed
    by_certificate = AccessPolicy([PeerSettings("viewer", "VIEWER", "", 0, permissions=frozenset({"find"}),
                                                tls_subject="CN=viewer")], [])
    assert by_certificate.check("find", "VIEWER", "10.9.8.7", "CN=viewer").allowed, "no host: the certificate decides"
    assert not by_certificate.check("find", "VIEWER", "10.9.8.7").allowed


def test_risky_access_settings_are_named() -> None:
    from dicomvault.access import exposure
    from dicomvault.config import PeerSettings

    assert exposure([], ["store"]) == []
    (open_reads,) = exposure([], ["store", "find"])
    assert "any AE title can read patient data" in open_reads
    trusting = PeerSettings("viewer", "VIEWER", "h", 104, permissions=frozenset({"get"}), check_host=False)
    (found,) = exposure([trusting], ["store"])
    assert found.startswith("[peers.viewer] may get and is believed by AE title from any address")
    assert exposure([PeerSettings("pacs", "PACS", "h", 104, check_host=False)], []) == [], "store/commit only"
