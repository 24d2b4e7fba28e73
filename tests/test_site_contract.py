"""The contract every site backend must pass (like restic's backend test suite).

Each backend runs against the real thing: ``file`` in a temporary directory, ``s3`` against
the moto server process of ``s3server.py``, ``vault`` against a second ``dicomvault serve``
whose replica store it talks to. Servers start once per module. A new backend is one entry
in ``BACKENDS`` below (plus its line in ``dicomvault/sites/registry.py``).

What a backend declares in ``capabilities`` is held against what it does: a declared
operation must work, an undeclared one must keep the interface's safe default (or refuse
with SiteError), never half-work.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Vault, blob, free_port, make_vault, wait_until
from s3server import S3Server, s3_server, unique_bucket_name  # noqa: F401 - fixtures

from dicomvault.sites import Capabilities, ObjectExists, ObjectRetention, Site, SiteError, open_site
from dicomvault.sites.registry import BACKENDS as SCHEMES

SITES = Path(__file__).resolve().parents[1] / "src" / "dicomvault" / "sites"


def name_of(data: bytes, salt: str = "") -> str:
    return hashlib.sha256(b"name" + salt.encode() + data).hexdigest()


def snapshot_name(second: int, millis: int | None = 0) -> str:
    stamp = f"20261123T1015{second:02d}" + (f".{millis:03d}" if millis is not None else "")
    return f"catalog-{stamp}Z-{secrets.token_hex(4)}"


# -- the backends under test -------------------------------------------------------------------


@dataclass
class Case:
    """One backend: how to get a fresh, empty site and what else the contract needs of it."""

    kind: str
    url: str
    options: dict[str, object]
    reopen: Callable[[], Site]  # a second client on the same storage (another process)
    unreachable: Callable[[], tuple[Site, str]]  # a site whose storage is gone, and the words naming it
    site: Site = field(init=False)

    def __post_init__(self) -> None:
        self.site = open_site(self.url, self.options)


def file_case(request: pytest.FixtureRequest) -> Case:
    root = request.getfixturevalue("tmp_path") / "site"

    def unreachable() -> tuple[Site, str]:
        gone = root.parent / "gone"
        site = open_site(f"file://{gone}")
        shutil.rmtree(gone)
        gone.write_bytes(b"")  # the mount point is no directory any more
        return site, str(gone)

    return Case("file", f"file://{root}", {}, lambda: open_site(f"file://{root}"), unreachable)


def s3_case(request: pytest.FixtureRequest) -> Case:
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_contract_bucket")
    url, options = f"s3://{bucket}/{uuid.uuid4().hex[:12]}", server.site_options()  # a prefix is a site

    def unreachable() -> tuple[Site, str]:
        site = open_site(url, server.site_options(endpoint_url=f"http://127.0.0.1:{free_port()}"))
        return site, url

    return Case("s3", url, options, lambda: open_site(url, options), unreachable)


def vault_case(request: pytest.FixtureRequest) -> Case:
    receiver: Receiver = request.getfixturevalue("vault_receiver")
    url, options = receiver.url, {"token": receiver.new_token(), "tls": "false"}

    def unreachable() -> tuple[Site, str]:
        port = free_port()
        return open_site(f"vault://127.0.0.1:{port}", dict(options)), f"127.0.0.1:{port}"

    return Case("vault", url, options, lambda: open_site(url, options), unreachable)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Case]] = {
    "file": file_case,
    "s3": s3_case,
    "vault": vault_case,
}


@dataclass
class Receiver:
    """A running ``dicomvault serve`` with its replica store on (plain HTTP on loopback)."""

    vault: Vault
    tokens_file: Path

    @property
    def url(self) -> str:
        return f"vault://127.0.0.1:{self.vault.http_port}"

    def new_token(self) -> str:
        """A new sender (so a new, empty store): a ``name:token`` line, as `replica-token add`
        writes it (mode 0600, replaced whole); the server re-reads the file when it changes."""
        token = secrets.token_urlsafe(32)
        lines = self.tokens_file.read_text().splitlines() if self.tokens_file.exists() else []
        temp = self.tokens_file.with_name(f".tokens-{uuid.uuid4().hex}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join([*lines, f"sender-{uuid.uuid4().hex[:12]}:{token}"]) + "\n")
        os.replace(temp, self.tokens_file)
        return token


@pytest.fixture(scope="module")
def vault_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    vault = make_vault(tmp_path_factory.mktemp("receiver"))
    with vault.config.open("a") as handle:
        handle.write("\n[replica_store]\nenabled = true\nallow_delete = true\n")
    receiver = Receiver(vault, vault.root / "keys" / "replica-tokens")
    vault.start()

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{vault.http_port}/replica/v1/health", timeout=2).status_code == 401
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=30, what="the replica store over HTTP")
    yield receiver
    vault.stop()


@pytest.fixture(scope="module")
def s3_contract_bucket(s3_server: S3Server) -> str:  # noqa: F811
    return s3_server.make_bucket(unique_bucket_name("contract"))


@pytest.fixture(params=sorted(BACKENDS))
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    made = BACKENDS[request.param](request)
    yield made
    made.site.close()


# -- objects ------------------------------------------------------------------------------------


def test_put_if_absent_is_write_once(case: Case) -> None:
    site = case.site
    first, second = blob("first"), blob("second")
    name = name_of(first)
    assert site.put_if_absent(name, first) is True
    assert site.put_if_absent(name, first) is False  # the same object again: already there
    try:
        assert site.put_if_absent(name, second) is False
    except ObjectExists:
        pass  # a backend that sees the bytes differ may say so; it never overwrites
    assert site.get(name) == first
    assert site.stat(name) == len(first)
    assert case.reopen().get(name) == first


@pytest.mark.parametrize("size", [0, 1, 4096, 300_000])
def test_get_gives_back_the_exact_bytes(case: Case, size: int) -> None:
    data = blob(f"exact-{size}", size)
    name = name_of(data, str(size))
    assert case.site.put_if_absent(name, data) is True
    assert case.site.get(name) == data
    assert case.site.stat(name) == size
    assert case.reopen().get(name) == data  # durable, not only cached by this client


def test_absent_objects(case: Case) -> None:
    site, missing = case.site, "ab" * 32
    with pytest.raises(KeyError):
        site.get(missing)
    assert site.stat(missing) is None
    assert site.checksum_sha256(missing) is None
    site.delete(missing)  # deleting what is not there is not an error
    assert list(site.list()) == []


def test_list_names_every_object_and_nothing_else(case: Case) -> None:
    site = case.site
    objects = {name_of(blob(str(i), 100 + i)): blob(str(i), 100 + i) for i in range(12)}
    objects["00" * 4] = b"shortest valid name"
    for name, data in objects.items():
        assert site.put_if_absent(name, data)
    site.put_snapshot(snapshot_name(1), b"a snapshot is no object") if site.capabilities.snapshots else None
    listed = list(site.list())
    assert sorted(listed) == sorted(objects)  # every one, once, and nothing else
    assert sorted(case.reopen().list()) == sorted(objects)


def test_delete_removes_the_object(case: Case) -> None:
    """Only policy (retention, shredding) deletes; when it does, the object is gone."""
    site = case.site
    keep, drop = blob("keep"), blob("drop")
    for data in (keep, drop):
        assert site.put_if_absent(name_of(data), data)
    site.delete(name_of(drop))
    with pytest.raises(KeyError):
        site.get(name_of(drop))
    assert site.stat(name_of(drop)) is None
    assert list(site.list()) == [name_of(keep)]
    assert case.reopen().stat(name_of(drop)) is None
    assert site.get(name_of(keep)) == keep
    assert site.put_if_absent(name_of(drop), drop) is True  # the name is free again


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABCDEF0123", "abc", "0123456789abcdeg", "", "ab/cd/abcdef01"])
def test_invalid_object_names_are_refused(case: Case, bad: str) -> None:
    site = case.site
    for operation in (lambda: site.put_if_absent(bad, b"x"), lambda: site.get(bad),
                      lambda: site.stat(bad), lambda: site.delete(bad)):
        with pytest.raises(SiteError, match="invalid object name"):
            operation()
    assert list(site.list()) == []


# -- capabilities: declared means it works, undeclared means the safe default ------------------


def test_checksums(case: Case) -> None:
    site = case.site
    data = blob("checksum", 123_457)
    name = name_of(data)
    assert site.put_if_absent(name, data)
    if site.capabilities.checksums:
        assert site.checksum_sha256(name) == hashlib.sha256(data).hexdigest()
        assert case.reopen().checksum_sha256(name) == hashlib.sha256(data).hexdigest()  # from the store
    else:
        assert site.checksum_sha256(name) is None  # cannot vouch: the caller reads back
    assert site.checksum_sha256("cd" * 32) is None


def test_snapshots(case: Case) -> None:
    site = case.site
    if not site.capabilities.snapshots:
        with pytest.raises(SiteError):
            site.put_snapshot(snapshot_name(1), b"x")
        assert site.list_snapshots() == []
        return
    assert site.list_snapshots() == []
    # Taken oldest first: second 1 (old name without millis), 2.001, 2.010, 3.
    names = [snapshot_name(1, None), snapshot_name(2, 1), snapshot_name(2, 10), snapshot_name(3)]
    bodies = {name: blob(name, 1000 + i) for i, name in enumerate(names)}
    for name in reversed(names):
        site.put_snapshot(name, bodies[name])
    assert site.list_snapshots() == names
    assert case.reopen().list_snapshots() == names
    for name in names:
        assert site.get_snapshot(name) == bodies[name]
    assert list(site.list()) == []  # snapshots are not objects

    with pytest.raises(SiteError):  # a name is never reused
        site.put_snapshot(names[0], b"another snapshot")
    assert site.get_snapshot(names[0]) == bodies[names[0]]

    site.delete_snapshot(names[1])
    assert site.list_snapshots() == [names[0], *names[2:]]
    with pytest.raises(KeyError):
        site.get_snapshot(names[1])
    with pytest.raises(KeyError):
        site.get_snapshot(snapshot_name(9))

    for bad in ("catalog-latest", "../catalog-20261123T101500Z-1a2b3c4d", "catalog-20261123T101500Z-1A2B3C4D"):
        for operation in (site.get_snapshot, site.delete_snapshot, lambda name: site.put_snapshot(name, b"x")):
            with pytest.raises(SiteError, match="invalid catalog snapshot name"):
                operation(bad)
    assert site.list_snapshots() == [names[0], *names[2:]]


def test_key_records(case: Case) -> None:
    """Key records are replaced in place (rotation) and always deletable (the shred)."""
    site = case.site
    first, second = secrets.token_hex(16), secrets.token_hex(16)
    if not site.capabilities.keys:
        with pytest.raises(SiteError):
            site.put_key(first, b"x")
        assert site.list_keys() == []
        return
    assert site.list_keys() == []
    site.put_key(first, b"record one")
    site.put_key(second, b"record two")
    site.put_key(first, b"record one, re-wrapped")
    assert site.list_keys() == sorted([first, second]) and case.reopen().list_keys() == sorted([first, second])
    assert site.get_key(first) == b"record one, re-wrapped" and site.get_key(second) == b"record two"
    assert list(site.list()) == [] and site.list_snapshots() == []  # records are neither objects nor snapshots
    site.delete_key(first)
    site.delete_key(first)  # absent is fine
    with pytest.raises(KeyError):
        site.get_key(first)
    assert site.list_keys() == [second]
    for bad in ("ab" * 8, "../" + "a" * 29, "A" * 32, "a" * 33):
        for operation in (site.get_key, site.delete_key, lambda name: site.put_key(name, b"x")):
            with pytest.raises(SiteError, match="invalid key record name"):
                operation(bad)


def test_object_lock(case: Case) -> None:
    site = case.site
    data = blob("retained")
    name = name_of(data)
    assert site.put_if_absent(name, data)
    held, retention = site.get_with_retention(name)
    assert held == data and isinstance(retention, ObjectRetention)
    with pytest.raises(KeyError):
        site.get_with_retention("cd" * 32)
    if not site.capabilities.object_lock:
        assert retention == ObjectRetention()
        with pytest.raises(SiteError):
            site.extend_retention(name, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
    # A backend declaring object_lock: its retention behaviour needs a locked bucket
    # (tests/test_site_s3.py, tests/test_verify_s3.py).


def test_crash_recovery_contract(case: Case) -> None:
    """put -> flush -> release_intents; what ``recover`` returns in between is what a crash
    would leave to authenticate and re-index."""
    site = case.site
    data, other = blob("journaled"), blob("discarded")
    assert site.put_if_absent(name_of(data), data)
    if case.site.capabilities.journal:
        assert site.put_if_absent(name_of(other), other)
        site.flush()
        survivor = case.reopen()  # the next process after a crash, before the index caught up
        assert sorted(survivor.recover()) == sorted([name_of(data), name_of(other)])
        survivor.discard(name_of(other))  # failed to authenticate: never acknowledged
        assert survivor.stat(name_of(other)) is None and name_of(other) not in list(survivor.list())
        survivor.release_intents([name_of(data)])
        assert case.reopen().recover() == []
        assert case.reopen().get(name_of(data)) == data
    else:
        site.flush()
        site.release_intents([name_of(data)])
        assert case.reopen().recover() == []  # durable on return: nothing to recover
        assert site.enable_journal() is False
        assert case.reopen().get(name_of(data)) == data


def test_journal_when_declared(case: Case) -> None:
    site = case.site
    if not site.capabilities.journal:
        assert site.enable_journal() is False
        return
    assert site.enable_journal() is True
    data = blob("through the journal", 50_000)
    name = name_of(data)
    assert site.put_if_absent(name, data) is True
    assert site.put_if_absent(name, data) is False
    assert site.get(name) == data and site.stat(name) == len(data) and list(site.list()) == [name]
    site.flush()
    site.release_intents([name])
    site.close()  # gives the journal up; the object stays
    site.close()  # idempotent
    assert case.reopen().recover() == []
    assert case.reopen().get(name) == data


def test_capabilities_are_declared_by_the_backend_class(case: Case) -> None:
    assert isinstance(case.site.capabilities, Capabilities)
    assert type(case.site).capabilities == case.site.capabilities


def test_a_pacs_is_not_a_site() -> None:
    """Promise 5: a site is handed sealed bytes only; a dicom:// PACS, which must be sent
    plaintext, is a replication target in peers/ and cannot be opened as a site."""
    assert "dicom" not in SCHEMES
    with pytest.raises(SiteError, match="replication target, not a site"):
        open_site("dicom://PACS@127.0.0.1:104")


# -- failures ----------------------------------------------------------------------------------


def test_unreachable_backend_raises_site_error_naming_the_site(case: Case) -> None:
    site, where = case.unreachable()
    data = blob("nowhere")
    name = name_of(data)
    operations: dict[str, Callable[[], Any]] = {
        "put_if_absent": lambda: site.put_if_absent(name, data),
        "get": lambda: site.get(name),
        "stat": lambda: site.stat(name),
        "list": lambda: list(site.list()),
        "delete": lambda: site.delete(name),
    }
    if site.capabilities.checksums:
        operations["checksum_sha256"] = lambda: site.checksum_sha256(name)
    if site.capabilities.snapshots:
        operations.update(put_snapshot=lambda: site.put_snapshot(snapshot_name(1), data),
                          get_snapshot=lambda: site.get_snapshot(snapshot_name(2)),
                          list_snapshots=site.list_snapshots,
                          delete_snapshot=lambda: site.delete_snapshot(snapshot_name(3)))
    for what, operation in operations.items():
        with pytest.raises(SiteError) as caught:
            operation()
        assert where in str(caught.value), f"{what}: {caught.value}"
    health = site.health()
    assert health["ok"] is False
    site.close()


# -- the registry -------------------------------------------------------------------------------


def test_open_site_picks_the_backend_by_scheme(case: Case) -> None:
    opened = open_site(case.url, case.options)
    assert type(opened) is type(case.site) and opened.url == case.site.url
    assert case.kind in SCHEMES
    assert type(opened).__module__ == SCHEMES[case.kind].target.partition(":")[0]
    with pytest.raises(SiteError, match="unknown"):
        open_site(case.url, {**case.options, "no_such_option": 1})


def test_unsupported_scheme_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(SiteError, match=r"unsupported site URL 'ftp://host/x'.*file://.*s3://.*vault://"):
        open_site("ftp://host/x")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (relative ones resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "dicomvault.sites." if node.level == 1 else ""
            module = base + (node.module or "")
            found.add(module.rstrip("."))
            found.update(f"{module}.{alias.name}".replace("sites..", "sites.") for alias in node.names
                         if not node.module)
    return found


def test_no_import_cycle_between_the_interface_and_the_backends() -> None:
    backends = {target.partition(":")[0] for target in (b.target for b in SCHEMES.values())}
    base = _imports(SITES / "base.py")
    assert not {m for m in base if m.startswith("dicomvault.sites.")}, base
    for module in backends:
        path = SITES / f"{module.rsplit('.', 1)[1]}.py"
        assert "dicomvault.sites.registry" not in _imports(path), module
    # ...and importing the package loads no backend (nor its SDK) until a site is opened.
    probe = ("import sys, dicomvault.sites; "
             "print(sorted(m for m in sys.modules if m.startswith(('dicomvault.sites.', 'boto3', 'httpx'))))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SITES.parents[1])})
    assert run.stdout.strip() == "['dicomvault.sites.base', 'dicomvault.sites.registry']", run.stdout
