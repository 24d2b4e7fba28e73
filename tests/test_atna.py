"""ATNA audit export: every audit row reaches a real rsyslog as a DICOM Audit Message.

rsyslog (Debian's, OpenSSL stream driver) is started by the test on loopback ports with
certificates made here, and writes each received message, JSON-escaped, one per line; the
tests parse the RFC 5424 header and the XML and check them per event kind.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import Vault, dcmtk, free_port, wait_until

RSYSLOGD = "/usr/sbin/rsyslogd"
HEADER = re.compile(r"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[meta sequenceId=\"(\d+)\"\] (.*)$", re.S)


# --- certificates --------------------------------------------------------------------------------

def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_pem(path: Path, cert, key=None) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_pki(directory: Path, name: str = "test") -> SimpleNamespace:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} audit CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(common_name: str, usage, san) -> tuple:
        key = _key()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client, client_key = leaf("dicomvault", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("dicomvault")])
    _write_pem(directory / "ca.pem", ca)
    _write_pem(directory / "server.pem", server, server_key)
    _write_pem(directory / "client.pem", client, client_key)
    return SimpleNamespace(ca=directory / "ca.pem", server=directory / "server.pem", server_key=directory / "server.key",
                           client=directory / "client.pem", client_key=directory / "client.key")


# --- a real rsyslog ------------------------------------------------------------------------------

@dataclass
class Rsyslog:
    directory: Path
    pki: SimpleNamespace
    tls_port: int = field(default_factory=free_port)
    udp_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def out(self) -> Path:
        return self.directory / "received.log"

    def start(self) -> None:
        if not Path(RSYSLOGD).exists():
            pytest.fail(f"{RSYSLOGD} missing: run scripts/test, which installs rsyslog and rsyslog-openssl")
        (self.directory / "work").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "rsyslog.conf"
        conf.write_text(f"""
global(workDirectory="{self.directory / 'work'}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriver="ossl" defaultNetstreamDriverCAFile="{self.pki.ca}"
       defaultNetstreamDriverCertFile="{self.pki.server}" defaultNetstreamDriverKeyFile="{self.pki.server_key}")
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/name"
       permittedPeer=["dicomvault"])
input(type="imtcp" port="{self.tls_port}" address="127.0.0.1")
module(load="imudp")
input(type="imudp" port="{self.udp_port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg:::json%\\n")
action(type="omfile" file="{self.out}" template="raw")
""")
        log = open(self.directory / "rsyslogd.log", "ab")
        self.process = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.directory / "rsyslogd.pid")],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"rsyslogd exited: {(self.directory / 'rsyslogd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, timeout=20, what="rsyslogd listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def messages(self) -> list[SimpleNamespace]:
        """Every received message: the RFC 5424 header fields and the parsed XML."""
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            raw = json.loads(f'"{line}"')
            match = HEADER.match(raw)
            assert match, f"not an RFC 5424 message with our structured data: {raw[:200]!r}"
            pri, stamp, host, app, procid, msgid, seq, body = match.groups()
            assert body.startswith("\ufeff"), "MSG must be UTF-8 with a BOM"
            found.append(SimpleNamespace(pri=int(pri), timestamp=stamp, hostname=host, app_name=app, procid=procid,
                                         msgid=msgid, sequence=int(seq), xml=ET.fromstring(body[1:])))
        return found


@pytest.fixture
def pki(tmp_path: Path) -> SimpleNamespace:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def rsyslog(tmp_path: Path, pki: SimpleNamespace) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog", pki)
    yield server
    server.stop()


def configure(vault: Vault, url: str, pki: SimpleNamespace, client_cert: bool = True) -> None:
    vault.set_config("audit", "syslog", json.dumps(url))
    vault.set_config("audit", "syslog_ca_file", json.dumps(str(pki.ca)))
    if client_cert:
        vault.set_config("audit", "syslog_cert_file", json.dumps(str(pki.client)))
        vault.set_config("audit", "syslog_key_file", json.dumps(str(pki.client_key)))
    vault.set_config("audit", "hostname", '"vault.test"')


def audit_ids(vault: Vault) -> list[int]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT id FROM audit_log ORDER BY id")]


def instances(directory: Path, source: Path, count: int, studies: int = 1) -> list[Path]:
    """``count`` distinct instances made from ``source`` (new SOP Instance UIDs), over ``studies``."""
    import pydicom
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    files = []
    for i in range(count):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study_uids[i % studies]
        ds.SeriesInstanceUID = series_uids[i % studies]
        ds.PatientID = f"ATNA{i % studies}"
        path = directory / f"{i:03d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


def storescu(vault: Vault, files: list[Path]) -> None:
    run = subprocess.run([dcmtk("storescu"), "-aet", "MODALITY1", "-aec", vault.ae_title, "127.0.0.1",
                          str(vault.dicom_port), *map(str, files)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def by_event(messages: list[SimpleNamespace], code: str) -> list[SimpleNamespace]:
    return [m for m in messages if m.xml.find("EventIdentification/EventID").get("csd-code") == code]


def local_action(message: SimpleNamespace) -> str:
    return next(e.get("csd-code") for e in message.xml.iter("EventTypeCode")
                if e.get("codeSystemName") == "99DICOMVAULT")


def participants(message: SimpleNamespace) -> dict[str, ET.Element]:
    """ActiveParticipant elements by their RoleIDCode (or "" when none)."""
    result = {}
    for element in message.xml.iter("ActiveParticipant"):
        role = element.find("RoleIDCode")
        result[role.get("csd-code") if role is not None else ""] = element
    return result


def objects(message: SimpleNamespace, id_type: str) -> list[str]:
    return [o.get("ParticipantObjectID") for o in message.xml.iter("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type]


# --- tests ---------------------------------------------------------------------------------------

def test_every_event_kind_arrives_over_tls_as_a_dicom_audit_message(vault: Vault, rsyslog: Rsyslog,
                                                                     pki: SimpleNamespace, ct_small: Path,
                                                                     tmp_path: Path) -> None:
    import pydicom

    rsyslog.start()
    configure(vault, f"tls://127.0.0.1:{rsyslog.tls_port}", pki)
    vault.start()
    files = instances(tmp_path / "in", ct_small, 3)
    storescu(vault, files)
    vault.wait_settled()
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    vault.cli("find", "--patient-id", "ATNA0")
    vault.cli("get", study, "--out", str(tmp_path / "out"))
    import urllib.error

    with pytest.raises(urllib.error.HTTPError):
        vault.api("/api/status", token="not-a-token")  # a failed login
    subprocess.run([dcmtk("findscu"), "-S", "-aet", "NOSY", "-aec", vault.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyInstanceUID=", "127.0.0.1", str(vault.dicom_port)], capture_output=True, timeout=30)
    vault.stop()
    ids = audit_ids(vault)
    wait_until(lambda: sorted({m.sequence for m in rsyslog.messages()}) == ids, timeout=20,
               what="one syslog message per audit row")
    messages = rsyslog.messages()
    assert {m.msgid for m in messages} == {"IHE+RFC-3881"}
    assert {m.hostname for m in messages} == {"vault.test"} and {m.app_name for m in messages} == {"dicomvault"}
    assert all(m.pri // 8 == 10 for m in messages), "facility 10 (security/authorization)"
    assert all(m.xml.find("AuditSourceIdentification").get("AuditSourceID") == "vault.test" for m in messages)

    app = by_event(messages, "110100")
    types = [e.get("csd-code") for m in app if local_action(m) == "serve" for e in m.xml.iter("EventTypeCode")]
    assert "110120" in types and "110121" in types, "serve start and stop are Application Activity"

    stores = [m for m in by_event(messages, "110104") if local_action(m) == "store"]
    assert len(stores) == 3
    for m in stores:
        event = m.xml.find("EventIdentification")
        assert event.get("EventActionCode") == "C" and event.get("EventOutcomeIndicator") == "0"
        assert m.pri % 8 == 5
        who = participants(m)
        assert who["110153"].get("UserID") == "MODALITY1" and who["110153"].get("UserIsRequestor") == "true"
        assert who["110153"].get("NetworkAccessPointID") == "127.0.0.1"
        assert who["110152"].get("AlternativeUserID") == "AETITLES=DICOMVAULT"
        assert objects(m, "110180") == [study] and objects(m, "2") == ["ATNA0"]
        sop = m.xml.find("ParticipantObjectIdentification/SOPClass")
        assert sop.get("UID") == pydicom.dcmread(files[0]).SOPClassUID
    stored_uids = {m.xml.find("ParticipantObjectIdentification/SOPClass/Instance").get("UID") for m in stores}
    assert stored_uids == {pydicom.dcmread(f).SOPInstanceUID for f in files}

    reads = [m for m in by_event(messages, "110104") if local_action(m) == "read"]
    assert len(reads) == 1 and reads[0].xml.find("EventIdentification").get("EventActionCode") == "R"
    assert objects(reads[0], "110180") == [study]
    assert participants(reads[0])["110153"].get("UserID") == "dicomvault"

    queries = by_event(messages, "110112")
    assert len(queries) == 1
    query = queries[0].xml.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    import base64

    assert json.loads(base64.b64decode(query.text))["patient_id"] == "ATNA0"

    logins = by_event(messages, "110114")
    assert len(logins) == 1
    event = logins[0].xml.find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == "8" and logins[0].pri % 8 == 4
    assert [e.get("csd-code") for e in event.iter("EventTypeCode")][0] == "110122"
    assert participants(logins[0])["110153"].get("NetworkAccessPointID") == "127.0.0.1"

    (denied,) = [m for m in by_event(messages, "110113") if local_action(m) == "access-denied"]
    event = denied.xml.find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == "8" and "110132" in [e.get("csd-code") for e in event.iter("EventTypeCode")]
    assert participants(denied)["110153"].get("UserID") == "NOSY", "a C-FIND from an unknown AE is a Security Alert"

    config = [m for m in by_event(messages, "110113") if local_action(m) == "config"]
    assert config and "110131" in [e.get("csd-code") for e in config[0].xml.iter("EventTypeCode")], \
        "init is a Security Alert (Software Configuration)"


def test_udp_transport_delivers_rfc5426_datagrams(vault: Vault, rsyslog: Rsyslog, pki: SimpleNamespace,
                                                  ct_small: Path, tmp_path: Path) -> None:
    rsyslog.start()
    configure(vault, f"udp://127.0.0.1:{rsyslog.udp_port}", pki, client_cert=False)
    vault.start()
    storescu(vault, instances(tmp_path / "in", ct_small, 2))
    vault.wait_settled()
    wait_until(lambda: len(by_event(rsyslog.messages(), "110104")) == 2, timeout=20, what="two stores over UDP")
    assert sorted(m.sequence for m in rsyslog.messages()) == audit_ids(vault)
    assert vault.status()["audit"]["export"]["backlog"] == 0


def test_an_outage_loses_nothing_and_catches_up(vault: Vault, rsyslog: Rsyslog, pki: SimpleNamespace,
                                                ct_small: Path, tmp_path: Path) -> None:
    configure(vault, f"tls://127.0.0.1:{rsyslog.tls_port}", pki)  # nothing listens there yet
    vault.start()
    storescu(vault, instances(tmp_path / "in", ct_small, 20, studies=2))
    vault.wait_settled()

    def stuck() -> bool:
        export = vault.status()["audit"]["export"]
        return export["backlog"] >= 21 and bool(export["error"])

    wait_until(stuck, timeout=20, interval=0.5, what="the export to report the outage")
    assert re.search(r"  audit export to tls://127\.0\.0\.1:\d+: \d+ event\(s\) to send \(last error: ",
                     vault.cli("status", check=False).stdout)
    rsyslog.start()
    ids = audit_ids(vault)
    wait_until(lambda: sorted({m.sequence for m in rsyslog.messages()}) == ids, timeout=30,
               what="every audit row delivered after the outage")
    assert len(by_event(rsyslog.messages(), "110104")) == 20
    export = vault.status()["audit"]["export"]
    assert export["backlog"] == 0 and export["delivered_through"] == ids[-1] and export["error"] is None
    metrics = __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{vault.http_port}/metrics").read()
    assert b"dicomvault_audit_export_backlog 0.0" in metrics

    rsyslog.stop()  # now the open connection dies under the forwarder
    storescu(vault, instances(tmp_path / "more", ct_small, 5))
    vault.wait_settled()
    rsyslog.start()
    ids = audit_ids(vault)
    wait_until(lambda: sorted({m.sequence for m in rsyslog.messages()}) == ids, timeout=30,
               what="the rows written while the server restarted")
    assert len(by_event(rsyslog.messages(), "110104")) == 25


def test_one_connection_carries_many_batches(rsyslog: Rsyslog, pki: SimpleNamespace) -> None:
    """TLS 1.3 session tickets are readable data: they must not pass for the server's close."""
    from dicomvault.audit import syslog

    rsyslog.start()
    sender = syslog.TlsSender("127.0.0.1", rsyslog.tls_port, str(pki.ca), str(pki.client), str(pki.client_key))
    sockets = []
    for i in range(1, 6):
        sender.send([syslog.message(b"<AuditMessage/>", ts=0.0, hostname="h", app_name="t", procid="1", sequence=i)])
        sockets.append(sender._sock)
    sender.close()
    assert len(set(map(id, sockets))) == 1
    wait_until(lambda: len(rsyslog.messages()) == 5, timeout=10, what="five messages")


def test_an_untrusted_server_gets_nothing(vault: Vault, rsyslog: Rsyslog, tmp_path: Path) -> None:
    """The server's certificate is checked against syslog_ca_file: another CA's server is refused."""
    rsyslog.start()
    configure(vault, f"tls://127.0.0.1:{rsyslog.tls_port}", make_pki(tmp_path / "other", "other"))
    vault.start()
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in (vault.status()["audit"]["export"]["error"] or ""),
               timeout=20, interval=0.5, what="the export to refuse the server's certificate")
    assert not rsyslog.messages()


def test_unreadable_tls_files_stop_serve_with_the_reason(vault: Vault, pki: SimpleNamespace) -> None:
    configure(vault, "tls://127.0.0.1:6514", SimpleNamespace(ca=vault.root / "missing-ca.pem", client=pki.client,
                                                             client_key=pki.client_key))
    run = subprocess.run([sys.executable, "-m", "dicomvault.cli", "serve", "--config", str(vault.config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "[audit] cannot use the TLS files" in run.stderr + run.stdout and "missing-ca.pem" in run.stderr + run.stdout
    assert not vault.echo(), "nothing listens"


# --- the mapping, without a server -----------------------------------------------------------------

@functools.cache
def _parsed(src: Path) -> dict[str, Any]:
    import ast

    return {".".join(("dicomvault",) + p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"):
            ast.parse(p.read_text()) for p in src.rglob("*.py")}


def audited_values(src: Path, parameter: str) -> set[str]:
    """The string constants passed as ``parameter`` (action, outcome) anywhere in src: to
    ``AuditEvent`` and to every function with that parameter whose name mentions audit, called
    or handed to ``run_in_threadpool`` (``ast``: a call is matched to the definition in its own
    module or in the module it imported the name from)."""
    import ast

    modules = {".".join(("dicomvault",) + p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
               for p in src.rglob("*.py")}
    trees = _parsed(src)
    helpers: dict[tuple[str, str], int] = {}  # (module, function) -> index of the parameter (self not counted)
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "audit" in node.name:
                names = [a.arg for a in node.args.args if a.arg != "self"]
                if parameter in names:
                    helpers[(module, node.name)] = names.index(parameter)

    def name_of(node: ast.AST) -> str:
        return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")

    found: set[str] = set()
    for module, tree in trees.items():
        origin = {}  # imported name -> its module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                package = module if modules[module].name == "__init__.py" else module.rsplit(".", 1)[0]
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
                source = ".".join(part for part in (base, node.module or "") if part)
                origin.update({alias.asname or alias.name: source for alias in node.names})

        def index_of(name: str) -> int | None:
            return helpers.get((module, name), helpers.get((origin.get(name, ""), name)))

        auditing = "audit" in modules[module].read_text()
        for node in ast.walk(tree):  # outcome = "..." / status, outcome = 409, "conflict"
            if auditing and isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple) and \
                        isinstance(node.value, ast.Tuple) else [(target, node.value)]
                    for name_node, value in pairs:
                        if getattr(name_node, "id", "").endswith(parameter):
                            found |= {c.value for c in ast.walk(value)
                                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name, args = name_of(call.func), call.args
            if index_of(name) is None and args and index_of(name_of(args[0])) is not None:
                name, args = name_of(args[0]), args[1:]  # run_in_threadpool(store.audit, ...)
            argument = next((k.value for k in call.keywords if k.arg == parameter), None)
            index = index_of(name)
            if argument is None and index is not None and len(args) > index:
                argument = args[index]
            if argument is not None and (name == "AuditEvent" or index is not None):
                found |= {c.value for c in ast.walk(argument) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return found


SRC = Path(__file__).resolve().parent.parent / "src" / "dicomvault"


def test_every_audited_action_in_the_code_has_a_dicom_event() -> None:
    """A new audited action in src must be mapped on purpose, not fall to the default."""
    from dicomvault.audit import atna

    found = audited_values(SRC, "action") | {"get", "move", "restore", "export", "recover"}  # via variables
    assert {"store", "login", "replica-auth", "replica-delete", "damage", "serve"} <= found, sorted(found)
    assert found - set(atna.RULES) == set()


def test_every_audited_outcome_has_a_severity() -> None:
    from dicomvault.audit import atna

    found = audited_values(SRC, "outcome")
    assert {"success", "duplicate", "refused", "stored", "conflict"} <= found, sorted(found)
    assert found - (atna.SUCCESS_OUTCOMES | atna.MINOR_OUTCOMES | atna.FAILURE_OUTCOMES) == set()


@pytest.mark.parametrize("action, outcome, event", [
    ("something-new", "success", "110100"), ("something-new", "refused", "110113"),
    ("query", "denied", "110113"), ("restore", "started", "110102"), ("export", "success", "110106"),
    ("delete", "success", "110105"), ("read", "success", "110103"),
])
def test_mapping_defaults(action: str, outcome: str, event: str) -> None:
    from dicomvault.audit import atna

    row = SimpleNamespace(id=1, ts=0.0, actor="dicom:X", action=action, subject="/api/status" if action == "read"
                          else "", outcome=outcome, detail="not json")
    xml = ET.fromstring(atna.build(row, atna.Source("s", "dicomvault", "AE", "h")))
    assert xml.find("EventIdentification/EventID").get("csd-code") == event


def test_bad_syslog_urls_are_named(tmp_path: Path) -> None:
    from dicomvault.config import ConfigError, load_settings

    for url in ("tcp://host:514", "tls://", "host:514"):
        (tmp_path / "dicomvault.toml").write_text(f'[audit]\nsyslog = "{url}"\n')
        with pytest.raises(ConfigError, match=r"\[audit\] syslog"):
            load_settings(tmp_path / "dicomvault.toml")
    shutil.rmtree(tmp_path)


def test_a_row_that_cannot_be_described_still_leaves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One odd row must not hold back every row after it: it goes without its detail."""
    from dicomvault.audit import atna, forward
    from dicomvault.config import load_settings

    (tmp_path / "dicomvault.toml").write_text('[audit]\nsyslog = "udp://127.0.0.1:9"\nhostname = "h"\n')
    exporter = forward.AuditForwarder(catalog=None, settings=load_settings(tmp_path / "dicomvault.toml"))
    real = atna.build

    def fussy(row, source):
        if row.detail != "{}":
            raise ValueError("cannot describe")
        return real(row, source)

    monkeypatch.setattr(atna, "build", fussy)
    row = SimpleNamespace(id=7, ts=0.0, actor="dicom:X", action="store", subject="1.2.3", outcome="success",
                          detail='{"study": "1.2"}')
    raw = exporter.message(row).decode()
    match = HEADER.match(raw)
    assert match and match.group(7) == "7"
    assert ET.fromstring(match.group(8)[1:]).find("EventIdentification/EventID").get("csd-code") == "110104"
