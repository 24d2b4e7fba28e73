"""DIMSE over TLS ([dicom] tls_port, [peers.NAME] tls): real DCMTK and Orthanc both ways.

Certificates are made here with ``cryptography``: a test CA, the vault's certificate (for
127.0.0.1/localhost, also its client certificate), a modality's client certificate, Orthanc's,
and a client certificate from another CA that must be refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
import sqlite3
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import Vault, dcmtk, free_port, make_vault, wait_until
from orthanc import Orthanc, orthanc_factory  # noqa: F401

MODALITY_SUBJECT = "CN=CT-SCANNER-1,O=Test Hospital"


# --- certificates -------------------------------------------------------------------------------


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(rfc4514: str) -> x509.Name:
    parts = dict(part.split("=", 1) for part in rfc4514.split(","))
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in reversed(list(parts.items()))])


class Authority:
    """A CA that issues PEM certificate/key pairs into ``root``."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(f"CN={name},O=Test Hospital")
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = root / f"{name}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, file_name: str, subject: str, hosts: tuple[str, ...] = ()) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(self.name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.root / f"{file_name}.pem", self.root / f"{file_name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        issued.key.chmod(0o600)
        return issued


@dataclass
class Pki:
    ca: Authority
    vault: Issued
    modality: Issued
    orthanc: Issued
    stranger: Issued  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = Authority(root, "test-ca"), Authority(root, "other-ca")
    return Pki(ca, ca.issue("vault", "CN=dicomvault,O=Test Hospital", ("127.0.0.1", "localhost")),
               ca.issue("modality", MODALITY_SUBJECT), ca.issue("orthanc", "CN=orthanc,O=Test Hospital",
                                                                ("127.0.0.1", "localhost")),
               other.issue("stranger", "CN=stranger,O=Elsewhere"))


# --- the vault ----------------------------------------------------------------------------------


def configure_tls(vault: Vault, pki: Pki, tls_port: int, peers: str = "") -> None:
    """[dicom] TLS keys (paths relative to the config, as a user would write them) and peers."""
    keys = vault.root / "keys"
    for name, issued in (("dicom", pki.vault),):
        (keys / f"{name}.pem").write_bytes(issued.cert.read_bytes())
        (keys / f"{name}.key").write_bytes(issued.key.read_bytes())
    (keys / "dicom-ca.pem").write_bytes(pki.ca.pem.read_bytes())
    for key, value in (("tls_port", str(tls_port)), ("tls_cert_file", '"keys/dicom.pem"'),
                       ("tls_key_file", '"keys/dicom.key"'), ("tls_ca_file", '"keys/dicom-ca.pem"')):
        vault.set_config("dicom", key, value)
    with open(vault.config, "a", encoding="utf-8") as f:
        f.write(peers)


# The SCU that stores, queries and retrieves: a peer with those permissions (reading is
# refused to callers that are not peers: access.py).
MODALITY_PEER = ('\n[peers.modality]\nae_title = "MODALITY"\nhost = "127.0.0.1"\nport = 104\n'
                 'permissions = ["store", "find", "get", "move"]\n')


# A peer believed only with the modality's client certificate (access.py: tls_subject).
SCANNER_PEER = ('\n[peers.scanner]\nae_title = "SCANNER"\nhost = "127.0.0.1"\nport = 104\n'
                f'permissions = ["find"]\ntls_subject = "{MODALITY_SUBJECT}"\n')


@pytest.fixture(scope="module")
def tls_vault(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Vault:
    vault = make_vault(tmp_path_factory.mktemp("tls") / "vault")
    vault.tls_port = free_port()  # type: ignore[attr-defined]
    configure_tls(vault, pki, vault.tls_port, MODALITY_PEER + SCANNER_PEER)  # type: ignore[attr-defined]
    vault.start()
    yield vault
    vault.stop()


def instance_count(vault: Vault) -> int:
    vault.wait_settled()
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def dataset_bytes(data: bytes) -> bytes:
    from dicomvault.dicom import parse_part10

    return data[parse_part10(data).dataset_offset:]


@pytest.fixture(scope="module")
def ct_clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CT_small without the trailing padding item storescu drops, so the wire bytes equal the file's."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]
    path = tmp_path_factory.mktemp("ct") / "ct_clean.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def tls_args(issued: Issued | None, pki: Pki) -> list[str]:
    """DCMTK's TLS options: our client certificate (or anonymous TLS) and the CA to trust."""
    auth = ["+tls", str(issued.key), str(issued.cert)] if issued else ["+tla"]
    return [*auth, "+cf", str(pki.ca.pem)]


def run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


# --- DCMTK against our TLS port ------------------------------------------------------------------


def test_dcmtk_store_find_get_over_tls(tls_vault: Vault, pki: Pki, ct_clean: Path, tmp_path: Path) -> None:
    port = str(tls_vault.tls_port)  # type: ignore[attr-defined]
    ds = pydicom.dcmread(ct_clean)
    sent = run([dcmtk("storescu"), *tls_args(pki.modality, pki), "-aet", "MODALITY", "-aec", tls_vault.ae_title,
                "127.0.0.1", port, str(ct_clean)])
    assert sent.returncode == 0, sent.stderr
    tls_vault.wait_settled()
    tls_vault.cli("get", ds.SOPInstanceUID, "--out", str(tmp_path / "out"))
    (got,) = list((tmp_path / "out").rglob("*.dcm"))
    assert dataset_bytes(got.read_bytes()) == dataset_bytes(ct_clean.read_bytes())
    # The association carried the verified client certificate's subject.
    wait_until(lambda: "TLS association from MODALITY@127.0.0.1" in tls_vault.log(), timeout=10, what="TLS log line")
    line = next(ln for ln in tls_vault.log().splitlines() if "TLS association from MODALITY" in ln)
    assert MODALITY_SUBJECT in line and "TLSv1." in line

    found = run([dcmtk("findscu"), *tls_args(pki.modality, pki), "-aet", "MODALITY", "-aec", tls_vault.ae_title,
                 "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                 "-k", "PatientID", "127.0.0.1", port])
    assert found.returncode == 0, found.stderr
    assert ds.PatientID in found.stdout + found.stderr and "Find Response: 1" in found.stdout + found.stderr

    # DCMTK 3.6.7's getscu has no TLS: the C-GET SCU is pynetdicom's, with the same certificate.
    got_back = c_get_over_tls(tls_vault, pki, ds.StudyInstanceUID, ds.file_meta.TransferSyntaxUID)
    assert got_back == [dataset_bytes(ct_clean.read_bytes())]


def test_a_peer_named_by_its_certificate_reads_only_over_tls_with_it(tls_vault: Vault, pki: Pki) -> None:
    def findscu(*args: str) -> str:
        found = run([dcmtk("findscu"), "-d", *args, "-aet", "SCANNER", "-aec", tls_vault.ae_title, "-S",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])
        return found.stdout + found.stderr

    over_tls = findscu(*tls_args(pki.modality, pki), "127.0.0.1", str(tls_vault.tls_port))  # type: ignore[attr-defined]
    assert "0x0124" not in over_tls and "DIMSE Status" in over_tls, over_tls[-2000:]
    plain = findscu("127.0.0.1", str(tls_vault.dicom_port))
    assert "0x0124" in plain and "find refused: AE SCANNER is [peers.scanner]" in plain, plain[-2000:]
    assert "did not present a TLS client certificate" in tls_vault.log()


def modality_context(pki: Pki) -> ssl.SSLContext:
    """A pynetdicom SCU's TLS context: the modality's certificate, trusting our test CA."""
    context = ssl.create_default_context(cafile=str(pki.ca.pem))
    context.load_cert_chain(pki.modality.cert, pki.modality.key)
    return context


def c_get_over_tls(vault: Vault, pki: Pki, study_uid: str, syntax: str) -> list[bytes]:
    """A Study Root C-GET as MODALITY over TLS (pynetdicom), taking CT in ``syntax`` only (the
    stored one, so nothing is re-encoded); the received data sets' bytes."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet  # type: ignore

    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    context = modality_context(pki)
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", vault.tls_port, ae_title=vault.ae_title,  # type: ignore[attr-defined]
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)], tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study_uid
    try:
        statuses = [status.Status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
                    if status]
    finally:
        assoc.release()
    assert statuses and statuses[-1] == 0x0000, [hex(s) for s in statuses]
    return received


@pytest.mark.parametrize("how, reason", [
    ("plain TCP", "WRONG_VERSION_NUMBER"), ("no client certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ("certificate from another CA", "CERTIFICATE_VERIFY_FAILED"), ("TLS 1.1", "UNSUPPORTED_PROTOCOL"),
])
def test_tls_port_refuses(tls_vault: Vault, pki: Pki, ct_clean: Path, tmp_path: Path, how: str, reason: str) -> None:
    """Each attempt fails cleanly, is logged with why, and stores nothing; the listener keeps serving."""
    before = instance_count(tls_vault)
    refused_before = tls_vault.log().count(f"refused: {reason}")
    ds = pydicom.dcmread(ct_clean)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)
    port = tls_vault.tls_port  # type: ignore[attr-defined]
    if how == "TLS 1.1":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client would speak TLS 1.1; the server must not
        context.load_cert_chain(pki.modality.cert, pki.modality.key)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises(ssl.SSLError):  # asyncio closes without flushing the alert: EOF here
                context.wrap_socket(raw)
    else:
        args = {"plain TCP": [], "no client certificate": tls_args(None, pki),
                "certificate from another CA": ["+tls", str(pki.stranger.key), str(pki.stranger.cert),
                                                "+cf", str(pki.ca.pem)]}[how]
        sent = run([dcmtk("storescu"), *args, "-to", "5", "-aet", "MODALITY", "-aec", tls_vault.ae_title,
                    "127.0.0.1", str(port), str(changed)])
        assert sent.returncode != 0, sent.stdout
    wait_until(lambda: tls_vault.log().count(f"refused: {reason}") > refused_before, timeout=10,
               what=f"the refused handshake logged with {reason}")
    assert instance_count(tls_vault) == before
    assert run([dcmtk("echoscu"), *tls_args(pki.modality, pki), "-aec", tls_vault.ae_title, "127.0.0.1",
                str(port)]).returncode == 0, "the TLS listener still serves"


def test_a_failed_handshake_is_audited(tls_vault: Vault) -> None:
    """A Security Alert for the security officer: who tried the TLS port without a valid
    certificate (audited at most once a minute per address: AuditThrottle)."""
    import socket

    with socket.create_connection(("127.0.0.1", tls_vault.tls_port), timeout=5) as plain:  # type: ignore[attr-defined]
        plain.sendall(b"\x01\x00\x00\x00\x00\x10" + bytes(16))  # an A-ASSOCIATE-RQ header, in clear

    def rows() -> list[tuple[str, str]]:
        return [(actor, detail) for actor, subject, detail in tls_vault.refusals() if subject == "tls"]

    wait_until(lambda: rows(), timeout=10, what="the refused handshake's audit row")
    actor, detail = rows()[0]
    assert actor == "tls:127.0.0.1" and "TLS handshake failed" in detail, (actor, detail)


def test_startup_refuses_unusable_tls_files(tmp_path: Path, pki: Pki) -> None:
    vault = make_vault(tmp_path / "vault")
    configure_tls(vault, pki, free_port())
    (vault.root / "keys" / "dicom.key").write_bytes(pki.modality.key.read_bytes())  # another certificate's key
    proc = vault.cli("serve", check=False, timeout=60)
    assert proc.returncode != 0
    assert "does not match the certificate" in proc.stderr + proc.stdout
    (vault.root / "keys" / "dicom.key").unlink()
    proc = vault.cli("serve", check=False, timeout=60)
    assert proc.returncode != 0 and "cannot be read" in proc.stderr + proc.stdout
    vault.set_config("dicom", "tls_cert_file", '""')
    vault.set_config("dicom", "tls_key_file", '""')
    proc = vault.cli("status", check=False, timeout=60)
    assert proc.returncode != 0 and "needs tls_cert_file and tls_key_file" in proc.stderr + proc.stdout


def c_move_over_tls(vault: Vault, port: int, pki: Pki, ds: pydicom.Dataset, destination: str) -> int:
    """An IMAGE-level Study Root C-MOVE as MODALITY over TLS (pynetdicom); the final status."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore

    context = modality_context(pki)
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title=vault.ae_title, tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID = ds.StudyInstanceUID, ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    try:
        statuses = [status for status, _ in assoc.send_c_move(query, destination,
                                                              StudyRootQueryRetrieveInformationModelMove) if status]
    finally:
        assoc.release()
    assert statuses, "no C-MOVE response"
    final = statuses[-1]
    assert getattr(final, "NumberOfFailedSuboperations", 0) == 0, final
    return int(final.Status)


# --- Orthanc (DicomTlsEnabled) both ways ----------------------------------------------------------


def tls_orthanc(factory: Callable[..., Orthanc], pki: Pki, aet: str) -> Orthanc:
    """An Orthanc whose DICOM port speaks TLS only and requires a client certificate from our CA."""
    return factory(aet=aet, config={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pki.orthanc.cert),
        "DicomTlsPrivateKey": str(pki.orthanc.key), "DicomTlsTrustedCertificates": str(pki.ca.pem),
        "DicomTlsRemoteCertificateRequired": True,
    })


def unique_copy(source: Path, dest: Path) -> tuple[Path, pydicom.Dataset]:
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dest, enforce_file_format=True)
    return dest, ds


def test_orthanc_both_ways_over_tls(orthanc_factory: Callable[..., Orthanc], tmp_path: Path, pki: Pki,  # noqa: F811
                                    ct_clean: Path) -> None:
    """Orthanc C-STOREs to our TLS port and asks for storage commitment (the report goes back
    over TLS); we export to it, C-MOVE to it and reconcile with it as a [peers.NAME] with
    tls = true, and replicate to another TLS Orthanc as a dicom:// site with tls = true. Orthanc's DICOM ports
    speak nothing but TLS, so every success below crossed TLS."""
    pacs = tls_orthanc(orthanc_factory, pki, "PACS")
    mirror = tls_orthanc(orthanc_factory, pki, "MIRROR")
    vault = make_vault(tmp_path / "vault")
    tls_port = free_port()
    configure_tls(vault, pki, tls_port, MODALITY_PEER +
                  f'\n[peers.pacs]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\ntls = true\n')
    vault.set_config("commitment", "check_interval", "0.1")
    vault.set_config("policy", "copies", "1")
    vault.set_config("policy", "offsite_copies", "0")
    with open(vault.config, "a", encoding="utf-8") as f:
        f.write(f'\n[sites.mirror]\nurl = "dicom://MIRROR@127.0.0.1:{mirror.dicom_port}"\noffsite = false\n'
                'tls = true\n')
    for orthanc in (pacs, mirror):
        orthanc.add_modality("vault", vault.ae_title, "127.0.0.1", tls_port, UseDicomTls=True)
    vault.start()
    try:
        # Orthanc -> our TLS port: stored byte-exact, the association carries Orthanc's subject.
        first, first_ds = unique_copy(ct_clean, tmp_path / "first.dcm")
        uploaded = pacs.upload(first)
        result = pacs.store_to_modality("vault", [uploaded["ID"]])
        assert result.get("FailedInstancesCount") == 0 and result.get("InstancesCount") == 1, result
        vault.wait_settled()
        vault.cli("get", first_ds.SOPInstanceUID, "--out", str(tmp_path / "out"))
        (got,) = list((tmp_path / "out").rglob("*.dcm"))
        assert dataset_bytes(got.read_bytes()) == dataset_bytes(first.read_bytes())
        assert re.search(r"TLS association from PACS@127\.0\.0\.1 \(TLSv1\.[23], client certificate "
                         r"CN=orthanc,O=Test Hospital\)", vault.log()), vault.log()

        # Storage commitment: Orthanc's N-ACTION on TLS, our N-EVENT-REPORT back on TLS.
        transaction = pacs.storage_commitment("vault", [uploaded["ID"]])["ID"]
        wait_until(lambda: pacs.rest("GET", f"/storage-commitment/{transaction}")["Status"] != "Pending",
                   timeout=30, what="Orthanc's storage commitment report")
        report = pacs.rest("GET", f"/storage-commitment/{transaction}")
        assert report["Status"] == "Success", f"{report}\n{vault.log()}"

        # We -> Orthanc: export of an instance Orthanc lacks, byte-exact.
        second, second_ds = unique_copy(ct_clean, tmp_path / "second.dcm")
        sent = run([dcmtk("storescu"), "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port), str(second)])
        assert sent.returncode == 0, sent.stderr
        vault.wait_settled()
        vault.cli("export", "--to", "pacs", "--study", str(second_ds.StudyInstanceUID), timeout=60)
        (found,) = pacs.lookup(str(second_ds.SOPInstanceUID))
        assert dataset_bytes(pacs.instance_file(found["ID"])) == dataset_bytes(second.read_bytes())

        # C-MOVE over TLS (asked by MODALITY on our TLS port), its sub-operations to Orthanc over TLS.
        third, third_ds = unique_copy(ct_clean, tmp_path / "third.dcm")
        sent = run([dcmtk("storescu"), "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port), str(third)])
        assert sent.returncode == 0, sent.stderr
        vault.wait_settled()
        assert c_move_over_tls(vault, tls_port, pki, third_ds, "PACS") == 0x0000
        (found,) = pacs.lookup(str(third_ds.SOPInstanceUID))
        assert dataset_bytes(pacs.instance_file(found["ID"])) == dataset_bytes(third.read_bytes())

        # The dicom:// site over TLS received every instance.
        wait_until(lambda: all(mirror.lookup(str(ds.SOPInstanceUID)) for ds in (first_ds, second_ds, third_ds)),
                   timeout=30, what="every instance replicated to the dicom:// site over TLS")

        # Reconcile (C-FIND client, pynetdicom) over TLS: both sides hold the same study.
        day = str(first_ds.StudyDate)
        reconciled = vault.cli("reconcile", "--pacs", "pacs", "--since", day, "--until", day, "--json", timeout=60)
        answer = json.loads(reconciled.stdout)
        assert answer["state"] == "completed" and answer["totals"]["in_both"] == 1, answer
        assert answer["totals"]["matching"] == 1, answer
        assert answer["totals"]["in_both"] == 1 and answer["totals"]["only_in_vault"] == 0, answer
    finally:
        vault.stop()  # before Orthanc, which waits for open associations at shutdown


def test_tls_config_keys_parse_resolve_and_refuse(tmp_path: Path, pki: Pki) -> None:
    """[dicom] and [peers.NAME] TLS keys: paths relative to the config; bad values named."""
    from dicomvault.config import ConfigError, load_settings
    from dicomvault.net.tls import TlsSetupError, client_context

    def load(text: str):  # noqa: ANN202
        (tmp_path / "dicomvault.toml").write_text(text)
        return load_settings(tmp_path / "dicomvault.toml")

    peer = '[peers.pacs]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 2762\n'
    settings = load(f'[dicom]\nport = 0\ntls_port = 2762\ntls_cert_file = "c.pem"\ntls_key_file = "c.key"\n'
                    f'{peer}tls = true\ntls_ca_file = "ca/pacs.pem"\n')
    assert settings.dicom.tls_cert_file == str(tmp_path / "c.pem") and settings.dicom.port == 0
    (pacs,) = settings.peers
    assert pacs.tls and pacs.tls_ca_file == str(tmp_path / "ca" / "pacs.pem")
    with pytest.raises(TlsSetupError, match=r"\[peers.pacs\] tls_ca_file .*pacs.pem cannot be read"):
        client_context(pacs, settings.dicom)
    assert client_context(load(peer).peers[0], None) is None  # no tls: plain TCP
    for text, message in (
        ("[dicom]\nport = 0\n", "needs a tls_port"),
        ('[dicom]\ntls_port = 2762\ntls_cert_file = "c.pem"\n', "both tls_cert_file and tls_key_file"),
        ('[dicom]\ntls_port = 11112\ntls_cert_file = "c"\ntls_key_file = "k"\n', "use two ports"),
        ('[dicom]\nengine = "pynetdicom"\ntls_port = 2762\ntls_cert_file = "c"\ntls_key_file = "k"\n',
         'engine = "lean"'),
        (f"{peer}tls = \"yes\"\n", "tls must be true or false"),
        (f'{peer}tls = true\ntls_cert_file = "c.pem"\n', "both tls_cert_file and tls_key_file"),
        (f'{peer}tls_ca_file = "ca.pem"\n', "not tls = true"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(text)
