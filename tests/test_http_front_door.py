"""The HTTP front door against a real `dicomvault serve`: roles, slow clients, bad numbers, files.

Issue 18, sections 3 and 5: a token's roles decide what it may do on DICOMweb (the API's
are in test_ops_api.py); a client stalling in its headers or body is answered and dropped
within ``[http] request_timeout``; numbers no route can use are 400/404, never 500; Orthanc's
73-character multipart boundary is accepted; the catalog and the data directory are private.
Slow clients are raw sockets, so what is sent (and not sent) is exact.
"""

from __future__ import annotations

import io
import itertools
import socket
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import Vault, make_vault
from orthanc import orthanc_factory  # noqa: F401
from test_dicomweb import audit_rows, instance_count

REQUEST_TIMEOUT = 2.0
SLACK = 2.0  # scheduling on a loaded CI host: answered within REQUEST_TIMEOUT + SLACK
READER, STORER = "r" * 40, "s" * 40
BOUNDARY = "dvfd-boundary"


@dataclass
class Door:
    vault: Vault
    study: str  # one instance stored over STOW-RS by the store token
    series: str
    sop: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.vault.http_port}"

    def headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}


def _instance(study: str | None = None) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study or generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "FRONTDOOR"
    return ds


def _part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _stow(door: Door, token: str | None, data: bytes, boundary: str = BOUNDARY) -> requests.Response:
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return requests.post(f"{door.base}/dicomweb/studies", data=body, timeout=30, headers={
        **door.headers(token), "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    vault = make_vault(tmp_path_factory.mktemp("frontdoor") / "vault")
    vault.set_config("dicomweb", "enabled", "true")
    vault.set_config("http", "request_timeout", str(REQUEST_TIMEOUT))
    with (vault.root / "keys" / "api-tokens").open("a") as handle:
        handle.write(f"viewer:{READER}:read\nmodality:{STORER}:store\n")
    vault.start()
    first = Door(vault, "", "", "")
    ds = _instance()
    stored = _stow(first, STORER, _part10(ds))
    assert stored.status_code == 200, stored.text
    yield Door(vault, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    vault.stop()


# --- roles ------------------------------------------------------------------------------------


def test_dicomweb_needs_a_token_and_the_role_for_what_it_asks(door: Door) -> None:
    vault, studies = door.vault, f"{door.base}/dicomweb/studies"
    denied = requests.get(studies, timeout=10)  # closed by default: no anonymous access
    assert denied.status_code == 401 and "[http] api_tokens_file" in denied.text
    found = requests.get(studies, params={"PatientID": "FRONTDOOR"}, headers=door.headers(READER), timeout=10)
    assert found.status_code == 200 and [s["0020000D"]["Value"][0] for s in found.json()] == [door.study]
    admin = requests.get(studies, params={"PatientID": "FRONTDOOR"}, headers=door.headers(vault.api_token()),
                         timeout=10)
    assert admin.status_code == 200 and len(admin.json()) == 1  # admin implies read

    before = instance_count(vault)
    refused = _stow(door, READER, _part10(_instance()))
    assert refused.status_code == 403 and "token 'viewer'" in refused.text and "needs 'store'" in refused.text
    assert instance_count(vault) == before  # nothing stored
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{door.study}",
                 f"/dicomweb/studies/{door.study}/series/{door.series}/instances/{door.sop}/metadata"):
        no_read = requests.get(door.base + path, headers=door.headers(STORER), timeout=10)
        assert no_read.status_code == 403 and "needs 'read'" in no_read.text, (path, no_read.text)
        assert no_read.headers["content-type"].startswith("text/plain")
    assert _stow(door, vault.api_token(), _part10(_instance())).status_code == 200  # admin implies store
    assert instance_count(vault) == before + 1

    forbidden = [row for action in ("store", "query", "read") for row in audit_rows(vault, action)
                 if row["outcome"] == "forbidden"]
    assert {(row["actor"].split("@")[0], row["detail"]["needed"]) for row in forbidden} == {
        ("dicomweb:viewer", "store"), ("dicomweb:modality", "read")}
    assert len(forbidden) == 4  # one per caller and resource: each was refused once
    requests.get(studies, headers=door.headers(STORER), timeout=10)  # again within the minute: throttled
    assert len([row for row in audit_rows(vault, "query") if row["outcome"] == "forbidden"]) == 1


def test_orthanc_73_character_boundary_is_accepted_and_absurd_ones_refused(door: Door) -> None:
    orthanc_like = "-" * 9 + "x" * 64  # 73 characters, as Orthanc's DICOMweb plugin sends
    assert len(orthanc_like) == 73
    before = instance_count(door.vault)
    stored = _stow(door, STORER, _part10(_instance()), boundary=orthanc_like)
    assert stored.status_code == 200, stored.text
    refused = _stow(door, STORER, _part10(_instance()), boundary="b" * 201)
    assert refused.status_code == 400 and "1-200 characters" in refused.text
    assert instance_count(door.vault) == before + 1


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian orthanc-dicomweb (scripts/test)


def test_orthanc_dicomweb_plugin_stows_into_the_vault(door: Door, orthanc_factory) -> None:  # noqa: F811
    """Orthanc's own STOW-RS client, with a token with the store role, is accepted. Its multipart
    boundary is 73 characters (two UUIDs and a dash): with RFC 2046's 70 the vault refused it."""
    assert DICOMWEB_PLUGIN.exists(), "install the Debian package orthanc-dicomweb (./scripts/test does)"
    pacs = orthanc_factory(config={"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {
        "Enable": True, "Root": "/dicom-web/",
        "Servers": {"vault": {"Url": f"{door.base}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {STORER}"}}}}})
    ds = _instance()
    data = _part10(ds)
    uploaded = pacs.upload(data)
    answer = pacs.rest("POST", "/dicom-web/servers/vault/stow", {"Resources": [uploaded["ID"]]})
    assert answer is None or "error" not in str(answer).lower(), answer
    instance = (f"{door.base}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")
    back = requests.get(instance, headers=door.headers(READER), timeout=30)
    assert back.status_code == 200 and pacs.instance_file(uploaded["ID"]) in back.content  # the very bytes


# --- numbers ----------------------------------------------------------------------------------


def test_numbers_no_route_can_use_are_400_or_404_never_500(door: Door) -> None:
    headers = door.headers(READER)
    for name, value in (("offset", "1e40"), ("offset", "99999999999999999999999"), ("limit", "1e3"),
                        ("limit", "99999999999999999999999"), ("offset", "\u00b2"), ("limit", "\u0663"),
                        ("offset", "-0"), ("limit", "0x10")):
        answer = requests.get(f"{door.base}/dicomweb/studies", params={name: value}, headers=headers, timeout=10)
        assert answer.status_code == 400 and name in answer.text and "integer" in answer.text, (name, value, answer.text)
    instance = f"{door.base}/dicomweb/studies/{door.study}/series/{door.series}/instances/{door.sop}"
    for frames in ("\u00b2", "99999999999999999999999", "1e3", "0"):
        answer = requests.get(f"{instance}/frames/{frames}", headers=headers, timeout=10)
        assert answer.status_code == 400 and "frame" in answer.text, (frames, answer.text)
    for path in ("7FE00010/\u00b2/00100010", "7FE00010/99999999999999999999999/00100010", "0x10/0/00100010"):
        answer = requests.get(f"{instance}/bulkdata/{path}", headers=headers, timeout=10)
        assert answer.status_code in (400, 404), (path, answer.text)
    assert requests.get(f"{door.base}/dicomweb/studies", params={"offset": "0", "limit": "5"}, headers=headers,
                        timeout=10).status_code == 200
    assert "Traceback" not in door.vault.log()


# --- slow clients -----------------------------------------------------------------------------


def _connect(door: Door) -> socket.socket:
    return socket.create_connection(("127.0.0.1", door.vault.http_port), timeout=10)


@contextmanager
def _trickle(sock: socket.socket, chunks: Iterable[bytes], every: float = 0.2) -> Iterator[None]:
    """Send ``chunks`` one every ``every`` seconds from a thread, for as long as the block runs."""
    stop = threading.Event()

    def run() -> None:
        for chunk in chunks:
            if stop.wait(every):
                return
            try:
                sock.send(chunk)
            except OSError:  # the server closed: what the tests wait for
                return

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(5)


def _until_closed(sock: socket.socket, bound: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(bound)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            raise AssertionError(f"the server kept the connection open for {bound:.1f} s; received {received[:200]!r}")
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - start


def test_stalled_headers_are_answered_408_and_closed_in_time(door: Door) -> None:
    with _connect(door) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\nX-Half: ")
        answer, took = _until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert REQUEST_TIMEOUT - 0.5 <= took <= REQUEST_TIMEOUT + SLACK
    with _connect(door) as sock:  # a connection that never sends a byte: closed, with no 408 to mistake
        answer, took = _until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert answer == b"" and REQUEST_TIMEOUT - 0.5 <= took <= REQUEST_TIMEOUT + SLACK


def test_a_trickle_of_header_bytes_does_not_extend_the_deadline(door: Door) -> None:
    """Slowloris: one byte every 0.2 s keeps the connection busy, never complete."""
    request = b"GET /healthz HTTP/1.1\r\nHost: vault\r\nX-Slow: " + b"a" * 500
    with _connect(door) as sock, _trickle(sock, (bytes([byte]) for byte in request)):
        start = time.monotonic()
        answer, _ = _until_closed(sock, REQUEST_TIMEOUT + SLACK + 1)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408") and took <= REQUEST_TIMEOUT + SLACK


def _post_head(path: str, token: str | None, length: int, content_type: str = "application/json") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: vault", f"Content-Type: {content_type}", f"Content-Length: {length}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_declared_body_over_the_limit_is_refused_at_once(door: Door) -> None:
    with _connect(door) as sock:  # /api takes JSON: 2 GB is refused before the application runs, and closed
        sock.sendall(_post_head("/api/restores", door.vault.api_token(), 2_000_000_000))
        answer, took = _until_closed(sock, REQUEST_TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 413") and b"max_body_bytes" in answer and took < 1.0
    with _connect(door) as sock:  # STOW-RS: over [dicomweb] max_request_bytes (2 GiB), after the token check
        sock.sendall(_post_head("/dicomweb/studies", STORER, 3_000_000_000,
                                f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'))
        sock.settimeout(REQUEST_TIMEOUT)
        start = time.monotonic()
        first = sock.recv(65536)
        took = time.monotonic() - start
        rest, _ = _until_closed(sock, REQUEST_TIMEOUT + SLACK)  # the unread body may linger up to the deadline
    assert first.startswith(b"HTTP/1.1 413") and b"max_request_bytes" in first + rest and took < 1.0



def test_a_chunked_body_over_the_limit_is_cut_off_while_it_streams(door: Door) -> None:
    """No Content-Length to refuse early: the body is counted as it arrives, 413 past 1 MiB."""
    head = (f"POST /api/restores HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {door.vault.api_token()}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    with _connect(door) as sock:
        sock.sendall(head)
        sock.sendall(chunk * 17)  # just over 1 MiB, then wait: nothing left unread to reset the answer
        answer, _took = _until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert answer.startswith(b"HTTP/1.1 413") and b"max_body_bytes" in answer, answer[:200]


@pytest.mark.parametrize("where", ["stow", "api"])
def test_a_stalled_body_is_answered_408_in_time_and_nothing_is_stored(door: Door, where: str) -> None:
    """A 2 GB STOW-RS body (under the 2 GiB cap) or a JSON body that stops arriving."""
    before = instance_count(door.vault)
    if where == "stow":
        head = _post_head("/dicomweb/studies", STORER, 2_000_000_000,
                          f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        partial = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _part10(_instance())[:3000]
    else:
        head, partial = _post_head("/api/restores", door.vault.api_token(), 100), b'{"to": "pa'
    with _connect(door) as sock:
        sock.sendall(head + partial)
        answer, took = _until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:300]
    assert REQUEST_TIMEOUT - 0.5 <= took <= REQUEST_TIMEOUT + SLACK
    assert instance_count(door.vault) == before
    assert "Traceback" not in door.vault.log()  # the application unwound quietly


def test_a_refused_request_cannot_keep_its_body_flowing(door: Door) -> None:
    """401 before the body is read: the connection is closed within the bound even as bytes trickle."""
    with _connect(door) as sock:
        sock.sendall(_post_head("/dicomweb/studies", None, 2_000_000_000,
                                f'multipart/related; type="application/dicom"; boundary={BOUNDARY}') + b"x" * 100)
        start = time.monotonic()
        with _trickle(sock, itertools.repeat(b"x" * 10)):
            answer, _ = _until_closed(sock, REQUEST_TIMEOUT + SLACK + 1)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 401") and took <= REQUEST_TIMEOUT + SLACK


def test_stalled_clients_do_not_hold_the_server(door: Door) -> None:
    stalled = []
    try:
        for i in range(40):
            sock = _connect(door)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n" if i % 2 else _post_head("/api/restores", door.vault.api_token(), 50))
            stalled.append(sock)
        start = time.monotonic()
        for _ in range(5):
            assert requests.get(f"{door.base}/healthz", timeout=5).status_code == 200
            found = requests.get(f"{door.base}/dicomweb/studies", params={"PatientID": "FRONTDOOR"},
                                 headers=door.headers(READER), timeout=5)
            assert found.status_code == 200
        assert time.monotonic() - start < 5
    finally:
        for sock in stalled:
            sock.close()


# --- files --------------------------------------------------------------------------------------


def test_data_directory_and_catalog_files_are_private_and_fixed_at_open(tmp_path: Path) -> None:
    vault = make_vault(tmp_path / "v")
    catalog = vault.root / "catalog.sqlite3"
    assert stat.S_IMODE(vault.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(catalog.stat().st_mode) == 0o600
    # As an older version left them: world-readable, with a write-ahead log beside the database.
    vault.root.chmod(0o755)
    catalog.chmod(0o644)
    wal = catalog.with_name(catalog.name + "-wal")
    wal.write_bytes(b"")
    wal.chmod(0o644)
    proc = vault.cli("status", check=False)
    assert proc.returncode in (0, 1, 2), proc.stderr
    assert stat.S_IMODE(vault.root.stat().st_mode) == 0o700 and stat.S_IMODE(catalog.stat().st_mode) == 0o600
    # The log says what was changed (SQLite removes the empty -wal when the command closes it).
    for path, mode in ((vault.root, "755"), (catalog, "644"), (wal, "644")):
        assert f"{path} was mode {mode} (readable by other users)" in proc.stderr, proc.stderr


def test_a_running_catalog_keeps_its_side_files_private(door: Door) -> None:
    catalog = door.vault.root / "catalog.sqlite3"
    side = [catalog.with_name(catalog.name + suffix) for suffix in ("-wal", "-shm")]
    assert all(path.exists() for path in side)  # WAL mode while serve runs
    for path in [catalog, *side]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(door.vault.root.stat().st_mode) == 0o700


def test_anonymous_roles_grant_only_what_they_name(vault: Vault) -> None:
    vault.set_config("dicomweb", "enabled", "true")
    vault.set_config("dicomweb", "anonymous_roles", '["admin"]')
    refused = vault.cli("status", check=False)
    assert refused.returncode != 0 and "[dicomweb] anonymous_roles" in refused.stderr
    vault.set_config("dicomweb", "anonymous_roles", '["read"]')
    with (vault.root / "keys" / "api-tokens").open("a") as handle:
        handle.write(f"modality:{STORER}:store\n")
    vault.start()
    door = Door(vault, "", "", "")
    assert requests.get(f"{door.base}/dicomweb/studies", timeout=10).status_code == 200  # read: no token needed
    assert _stow(door, None, _part10(_instance())).status_code == 401  # store still needs a token
    assert _stow(door, STORER, _part10(_instance())).status_code == 200
    assert instance_count(vault) == 1
    assert "DICOMweb grants read to requests without a token" in vault.log()


def test_token_lines_old_and_new_forms() -> None:
    from dicomvault.serve.tokens import expand_roles, split_line

    assert split_line("admin:abc:admin", True) == ("admin", "abc", ("admin",))
    assert split_line("ops : abc : operator, store ", True) == ("ops", "abc", ("operator", "store"))
    assert split_line("old:tok:EN-with-colon", True) == ("old", "tok:EN-with-colon", None)  # an old token with ':'
    assert split_line("sender:abc:read", False) == ("sender", "abc:read", None)  # replica store: no roles
    for bad in ("no-colon", "x:abc:reed", "x:abc:"):
        with pytest.raises(ValueError):
            split_line(bad, True)
    assert expand_roles(["admin"]) == {"read", "store", "operator", "admin"}
    assert expand_roles(["operator"]) == {"operator", "read"} and expand_roles(["store"]) == {"store"}
