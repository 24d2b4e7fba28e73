"""Replication to another dicomvault (``vault://``): two real ``dicomvault serve`` processes.

Vault A (the hospital) replicates over HTTPS with a bearer token to vault B (the off-site
vault), which keeps A's sealed objects as-is under ``replicas/<token name>/`` and never has
A's keys. B serves TLS with a certificate from a private CA generated here (``cryptography``);
A trusts it through the site's ``ca_file`` option. Tokens are created the way an operator
does it: ``dicomvault replica-token add NAME`` on B prints the token once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import Vault, make_vault, remount, wait_until
from test_replication_file import PATIENT, PATIENT_ID, drained, make_instances, objects_under, send, site_status

from dicomvault.sites import SiteError, open_site

SENDER = "hospital-a"  # the token's name on B: A's copies land in B/replicas/hospital-a


# -- a private CA and a server certificate for 127.0.0.1 ----------------------------------------

@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicomvault test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(files["key"], 0o600)
    return files


# -- the two vaults ----------------------------------------------------------------------------

class Receiver:
    """Vault B with its replica store on, serving HTTPS, and A's token."""

    def __init__(self, vault: Vault, token: str, ca_file: Path) -> None:
        self.vault, self.token, self.ca_file = vault, token, ca_file

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.vault.http_port}/replica/v1"

    @property
    def store(self) -> Path:
        return self.vault.root / "replicas" / SENDER

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        return httpx.Client(base_url=self.base, verify=ssl.create_default_context(cafile=self.ca_file), headers=headers,
                            timeout=10)

    def site_options(self, token: str | None = None) -> dict[str, str]:
        return {"token": token or self.token, "ca_file": str(self.ca_file)}

    def answers(self) -> bool:
        try:
            with self.client() as c:
                return c.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        self.vault.start()
        wait_until(self.answers, timeout=30, what="vault B's replica store over HTTPS")

    def audit_rows(self, action: str) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.vault.root / "catalog.sqlite3") as db:
            return list(db.execute("SELECT actor, subject, outcome FROM audit_log WHERE action = ? ORDER BY id",
                                   (action,)))


def make_receiver(root: Path, tls_files: dict[str, Path], extra: str = "") -> Receiver:
    vault = make_vault(root)
    vault.set_config("http", "tls_cert_file", json.dumps(str(tls_files["cert"])))
    vault.set_config("http", "tls_key_file", json.dumps(str(tls_files["key"])))
    with vault.config.open("a") as handle:
        handle.write(f"\n[replica_store]\nenabled = true\n{extra}")
    made = vault.cli("replica-token", "add", SENDER)
    token = made.stdout.strip()
    assert len(token) >= 32 and "\n" not in token, made.stdout
    tokens_file = vault.root / "keys" / "replica-tokens"
    assert tokens_file.stat().st_mode & 0o777 == 0o600
    assert tokens_file.read_text().strip() == f"{SENDER}:{token}"
    return Receiver(vault, token, tls_files["ca"])


@pytest.fixture
def receiver(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[Receiver]:
    r = make_receiver(tmp_path / "B", tls_files)
    r.start()
    yield r
    r.vault.stop()


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[Vault]:
    v = make_vault(tmp_path / "A")
    yield v
    v.stop()


def add_vault_site(sender: Vault, receiver: Receiver, token: str | None = None, *extra: str,
                   check: bool = True) -> subprocess.CompletedProcess[str]:
    options = [a for key, value in receiver.site_options(token).items() for a in ("--option", f"{key}={value}")]
    return sender.cli("sites", "add", "dr", f"vault://127.0.0.1:{receiver.vault.http_port}", *options, *extra,
                      check=check)


def primary_objects(vault: Vault) -> dict[str, bytes]:
    return objects_under(vault.root / "objects")


def phi_of(files: list[Path]) -> list[bytes]:
    # (Not the bare word "Replica": B's own config and code comments use it.)
    secrets = [PATIENT.encode(), PATIENT_ID.encode(), b"Patricia", str(pydicom.dcmread(files[0]).StudyInstanceUID).encode()]
    for path in files:
        data = path.read_bytes()
        secrets += [str(pydicom.dcmread(path).SOPInstanceUID).encode(), hashlib.sha256(data).hexdigest().encode(),
                    hashlib.sha256(data).digest()]
    return secrets


# -- the tests ---------------------------------------------------------------------------------

def test_vault_b_holds_a_sealed_objects_byte_for_byte_and_no_phi(
    sender: Vault, receiver: Receiver, ct_small: Path, tmp_path: Path
) -> None:
    add_vault_site(sender, receiver)
    sender.start()
    files = make_instances(ct_small, tmp_path / "in", 20)
    send(sender, tmp_path / "in")
    wait_until(lambda: drained(sender, "dr", 20), timeout=90, what="20 verified copies on vault B")

    primary = primary_objects(sender)
    held = objects_under(receiver.store)
    assert len(primary) == 20 and held == primary, "vault B must hold exactly A's sealed objects, byte for byte"
    assert not list((receiver.store / "intents").iterdir()), "B must release its intents once a PUT is durable"
    status = sender.status()
    assert status["sites"]["dr"]["reachable"] is True and status["sites"]["dr"]["verified_objects"] == 20
    assert status["sites"]["dr"]["url"] == f"vault://127.0.0.1:{receiver.vault.http_port}"

    # B's whole disk (objects, catalog, audit, log) holds no PHI and no plaintext hash of A's.
    receiver.vault.stop()
    everything = b"".join(p.read_bytes() for p in receiver.vault.root.rglob("*") if p.is_file())
    leaked = [s[:40] for s in phi_of(files) if s in everything]
    assert not leaked, f"plaintext found on vault B: {leaked}"
    # Every PUT was audited in B's chain, by the sender's token name, and the chain holds.
    puts = receiver.audit_rows("replica-put")
    assert sorted(subject for actor, subject, outcome in puts if outcome == "stored") == sorted(primary)
    assert {actor for actor, _, _ in puts} == {f"replica:{SENDER}"}
    assert receiver.vault.cli("audit", "verify").returncode == 0

    # The copies on B are enough to bring every file back with A's recovery key alone (via vault://).
    receiver.start()
    options = [a for k, v in receiver.site_options().items() for a in ("--option", f"{k}={v}")]
    run = subprocess.run(
        [sys.executable, "-m", "dicomvault.cli", "recover-read", "--site", f"vault://127.0.0.1:{receiver.vault.http_port}",
         *options, "--recovery-key", str(sender.root / "recovery-key.pem"), "--out", str(tmp_path / "back"), "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["written"] == 20
    # Received over DIMSE, so compare with what A itself returns (same Part-10 bytes, A's own get).
    sender.cli("get", str(pydicom.dcmread(files[0]).StudyInstanceUID), "--out", str(tmp_path / "from-a"))
    from_a = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "from-a").rglob("*") if p.is_file()}
    assert len(from_a) == 20
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "back").rglob("*.dcm")} == from_a


def test_wrong_token_is_reported_and_stores_nothing(
    sender: Vault, receiver: Receiver, ct_small: Path, tmp_path: Path
) -> None:
    refused = add_vault_site(sender, receiver, "not-the-token-at-all-0123456789", check=False)
    assert refused.returncode != 0 and "token rejected by vault https://127.0.0.1" in refused.stderr, refused.stderr
    add_vault_site(sender, receiver, "not-the-token-at-all-0123456789", "--no-test")
    sender.start()
    make_instances(ct_small, tmp_path / "in", 3)
    send(sender, tmp_path / "in")

    def refused_in_status() -> bool:
        dr = sender.status()["sites"]["dr"]
        return dr["reachable"] is False and "token rejected" in (dr.get("site_error") or "")
    wait_until(refused_in_status, timeout=30, what="the rejected token in A's status")
    status = sender.status()
    assert status["sites"]["dr"]["backlog_objects"] == 3 and status["sites"]["dr"]["verified_objects"] == 0
    assert any("dr unreachable" in alert and "token rejected" in alert for alert in status["alerts"])
    stored = [p for p in (receiver.vault.root / "replicas").rglob("*") if p.is_file()] \
        if (receiver.vault.root / "replicas").exists() else []
    assert stored == [], f"nothing may be stored for a rejected token: {stored}"
    denied = receiver.audit_rows("replica-auth")
    assert denied and all(outcome == "denied" and actor == "replica:unauthenticated" for actor, _, outcome in denied)

    # A vault that does not accept replicas says so (A itself: [replica_store] is off by default).
    plain = open_site(f"vault://127.0.0.1:{sender.http_port}", {"token": "x" * 32, "tls": "false"})
    assert "does not accept replicas" in str(plain.health()["error"])

    # Fixing the token drains the backlog.
    sender.stop()
    sender.set_config("sites.dr", "token", json.dumps(receiver.token))
    sender.start()
    wait_until(lambda: drained(sender, "dr", 3), timeout=60, what="the backlog drained with the right token")
    assert objects_under(receiver.store) == primary_objects(sender)


def test_receiver_outage_builds_a_backlog_then_drains(
    sender: Vault, receiver: Receiver, ct_small: Path, tmp_path: Path
) -> None:
    add_vault_site(sender, receiver)
    sender.start()
    make_instances(ct_small, tmp_path / "first", 4)
    send(sender, tmp_path / "first")
    wait_until(lambda: drained(sender, "dr", 4), timeout=60, what="first copies")

    receiver.vault.stop()
    make_instances(ct_small, tmp_path / "during", 15)
    send(sender, tmp_path / "during")  # A keeps acknowledging while B is down
    wait_until(lambda: site_status(sender)["dr"]["backlog_objects"] == 15, timeout=30, what="a backlog of 15")
    wait_until(lambda: sender.status()["sites"]["dr"]["reachable"] is False, timeout=30, what="B marked unreachable")
    dr = sender.status()["sites"]["dr"]
    assert dr["site_error"].startswith(f"cannot reach vault https://127.0.0.1:{receiver.vault.http_port}: "
                                       "connection refused"), dr
    assert dr["backlog_bytes"] > 0 and dr["verified_objects"] == 4
    assert len(objects_under(receiver.store)) == 4

    receiver.start()
    wait_until(lambda: drained(sender, "dr", 19), timeout=90, what="the backlog drained after B came back")
    assert objects_under(receiver.store) == primary_objects(sender)
    assert sender.status()["sites"]["dr"]["reachable"] is True


def test_replica_api_checks_bytes_tokens_names_and_stays_write_once(receiver: Receiver) -> None:
    name = "ab" * 32
    body = os.urandom(5000)
    digest = hashlib.sha256(body).hexdigest()
    with receiver.client() as api:
        bad = api.put(f"/objects/{name}", content=body, headers={"X-Content-SHA256": hashlib.sha256(b"x").hexdigest()})
        assert bad.status_code == 400 and "does not match" in bad.json()["error"]
        missing = api.put(f"/objects/{name}", content=body)
        assert missing.status_code == 400 and "X-Content-SHA256" in missing.json()["error"]
        assert not receiver.store.joinpath("objects", "ab", "ab", name).exists(), "a refused PUT stored something"
        assert api.get("/objects").json() == {"names": [], "next": None}
        assert api.head(f"/objects/{name}").status_code == 404

        assert api.put("/objects/NOT-HEX", content=body, headers={"X-Content-SHA256": digest}).status_code == 400
        created = api.put(f"/objects/{name}", content=body, headers={"X-Content-SHA256": digest})
        assert created.status_code == 201
        again = api.put(f"/objects/{name}", content=body, headers={"X-Content-SHA256": digest})
        assert again.status_code == 200 and again.json() == {"status": "present"}
        other = os.urandom(100)
        clash = api.put(f"/objects/{name}", content=other, headers={"X-Content-SHA256": hashlib.sha256(other).hexdigest()})
        assert clash.status_code == 409 and "never overwritten" in clash.json()["error"]
        head = api.head(f"/objects/{name}")
        assert head.status_code == 200 and head.headers["x-content-sha256"] == digest
        assert int(head.headers["content-length"]) == 5000
        assert api.get(f"/objects/{name}").content == body
        refused = api.delete(f"/objects/{name}")
        assert refused.status_code == 405 and "write-once" in refused.json()["error"]
        assert receiver.store.joinpath("objects", "ab", "ab", name).read_bytes() == body

    # Without a token or with a wrong one: the same 401, which never hints at the tokens that exist.
    with receiver.client("") as anonymous, receiver.client("w" * 43) as wrong:
        answers = [anonymous.get("/health"), wrong.get("/health"), wrong.get(f"/objects/{name}"),
                   wrong.put(f"/objects/{'cd' * 32}", content=body, headers={"X-Content-SHA256": digest})]
    assert [a.status_code for a in answers] == [401] * 4
    assert len({a.text for a in answers}) == 1 and SENDER not in answers[0].text
    assert not receiver.store.joinpath("objects", "cd").exists()

    # Plain HTTP to the HTTPS port gets nowhere; a client that does not trust B's CA neither.
    with pytest.raises(httpx.HTTPError):
        httpx.get(receiver.base.replace("https", "http") + "/health", timeout=5)
    untrusting = open_site(f"vault://127.0.0.1:{receiver.vault.http_port}", {"token": receiver.token})
    assert "TLS certificate not trusted" in str(untrusting.health()["error"])

    # The vault:// client end to end: put-if-absent, server-side checksum, paging, read, delete refused.
    site = open_site(f"vault://127.0.0.1:{receiver.vault.http_port}", receiver.site_options())
    names = sorted(hashlib.sha256(bytes([i])).hexdigest() for i in range(5))
    blobs = {n: os.urandom(300 + i) for i, n in enumerate(names)}
    for n in names:
        assert site.put_if_absent(n, blobs[n]) is True
    assert site.put_if_absent(names[0], blobs[names[0]]) is False
    with pytest.raises(SiteError, match="different object"):
        site.put_if_absent(names[0], b"other bytes")
    assert site.checksum_sha256(names[1]) == hashlib.sha256(blobs[names[1]]).hexdigest()
    assert site.checksum_sha256("ef" * 32) is None and site.stat("ef" * 32) is None
    assert site.stat(names[2]) == len(blobs[names[2]]) and site.get(names[3]) == blobs[names[3]]
    with pytest.raises(KeyError):
        site.get("ef" * 32)
    with receiver.client() as api:
        first = api.get("/objects", params={"limit": 2}).json()
        second = api.get("/objects", params={"limit": 2, "after": first["next"]}).json()
    expected = sorted([name, *names])
    assert first["names"] == expected[:2] and second["names"] == expected[2:4]
    assert list(site.list()) == expected
    with pytest.raises(SiteError, match="refuses deletion"):
        site.delete(names[4])
    assert site.get(names[4]) == blobs[names[4]]
    assert site.health()["ok"] is True

    outcomes = [outcome for actor, subject, outcome in receiver.audit_rows("replica-put") if subject == name]
    assert outcomes == ["rejected", "stored", "duplicate", "conflict"]
    assert [o for _, s, o in receiver.audit_rows("replica-delete")] == ["refused", "refused"]


def test_full_or_read_only_receiver_is_reported_with_the_reason(
    sender: Vault, tmp_path: Path, tls_files: dict[str, Path], tmpfs: Path, ct_small: Path
) -> None:
    receiver = make_receiver(tmp_path / "B", tls_files, extra=f"root = {json.dumps(str(tmpfs / 'replicas'))}\n")
    store = tmpfs / "replicas" / SENDER
    try:
        receiver.start()
        add_vault_site(sender, receiver)
        sender.start()
        make_instances(ct_small, tmp_path / "first", 3)
        send(sender, tmp_path / "first")
        wait_until(lambda: drained(sender, "dr", 3), timeout=60, what="first copies on the tmpfs")

        remount(tmpfs, "ro")
        make_instances(ct_small, tmp_path / "during", 6)
        send(sender, tmp_path / "during")
        wait_until(lambda: sender.status()["sites"]["dr"]["reachable"] is False, timeout=30, what="B read-only")
        dr = sender.status()["sites"]["dr"]
        assert "cannot store objects" in dr["site_error"] and "read-only" in dr["site_error"], dr
        assert dr["backlog_objects"] == 6 and len(objects_under(store)) == 3

        remount(tmpfs, "rw")
        wait_until(lambda: drained(sender, "dr", 9), timeout=60, what="the backlog drained after remount rw")
        assert objects_under(store) == primary_objects(sender)

        # A full disk answers 507 with the reason, and nothing partial is left behind.
        filler = tmpfs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            chunk = b"\xff" * (1 << 20)
            while os.write(fd, chunk):
                pass
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC: the tmpfs is full now
        finally:
            os.close(fd)
        site = open_site(f"vault://127.0.0.1:{receiver.vault.http_port}", receiver.site_options())
        with pytest.raises(SiteError, match=r"^vault https://127\.0\.0\.1:\d+ is full: the receiving vault's storage is full"):
            site.put_if_absent("ef" * 32, os.urandom(2 << 20))
        assert not (store / "objects" / "ef" / "ef" / ("ef" * 32)).exists() and not list((store / "intents").iterdir())
        filler.unlink()
    finally:
        sender.stop()
        receiver.vault.stop()


def test_catalog_snapshots_go_to_vault_b_and_a_rebuilds_from_them(
    sender: Vault, receiver: Receiver, ct_small: Path, tmp_path: Path
) -> None:
    add_vault_site(sender, receiver)
    sender.start()
    make_instances(ct_small, tmp_path / "in", 10)
    send(sender, tmp_path / "in")
    wait_until(lambda: drained(sender, "dr", 10), timeout=90, what="10 verified copies on vault B")
    snapshot = json.loads(sender.cli("snapshot", "--site", "dr", "--json").stdout)
    assert snapshot["sites"] == {"dr": "ok"}, snapshot
    held = sorted(p.name for p in (receiver.store / "snapshots").iterdir())
    assert snapshot["name"] in held  # with the one `serve` wrote at start
    assert ("replica:" + SENDER, snapshot["name"], "stored") in receiver.audit_rows("replica-snapshot")
    with receiver.client() as client:  # write-once and the name rule hold for snapshots too
        assert client.delete(f"/snapshots/{snapshot['name']}").status_code == 405
        assert client.get("/snapshots/not-a-snapshot").status_code == 400
        assert sorted(client.get("/snapshots").json()["names"]) == held
    sender.stop()
    for path in sender.root.glob("catalog.sqlite3*"):
        path.unlink()

    rebuilt = json.loads(sender.cli("rebuild-index", "--from", "dr", "--recovery-key",
                                    str(sender.root / "recovery-key.pem"), "--json").stdout)

    assert (rebuilt["snapshot"], rebuilt["instances"], rebuilt["objects_after_snapshot"]) == (snapshot["name"], 10, 0)
    assert sender.cli("audit", "verify").returncode == 0
