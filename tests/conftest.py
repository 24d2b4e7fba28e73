"""Shared fixtures: a real `dicomvault serve` process, DCMTK tool paths, free loopback ports.

Readiness is awaited by polling the real service (C-ECHO / HTTP), never by sleeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DCMTK_DIR = Path("/usr/bin")


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK tool (pynetdicom installs Python apps with the same names)."""
    path = DCMTK_DIR / tool
    if not path.exists():
        pytest.fail(f"DCMTK tool {path} missing: run the README's test command, which installs dcmtk")
    return str(path)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port for a test server, below the kernel's ephemeral range.

    A port from that range (what binding port 0 gives) can become the local end of any
    outgoing connection (an HTTP request to Orthanc, a C-ECHO...) between being chosen and
    being bound by the server, which then fails with "address already in use". Ports are
    not handed out twice in a session, so two servers never get the same one."""
    low, high = 10000, max(10000 + 1000, _EPHEMERAL_LOW - 1)
    rng = random.Random()
    for _ in range(2000):
        port = rng.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        if len(_HANDED_OUT) > (high - low) // 2:
            _HANDED_OUT.clear()
        return port
    raise RuntimeError(f"no free loopback port between {low} and {high}")


def findscu(vault: "Vault", parent: Path, model: str, *keys: str, calling: str = "", debug: bool = False,
            expect_ok: bool = True) -> tuple[list[Any], str]:
    """DCMTK findscu (``model``: "S" study root, "P" patient root; ``keys`` as its -k values)
    against the running vault; the identifiers it received, in order, and its log."""
    import pydicom
    from pydicom.uid import generate_uid

    out = parent / f"find-{generate_uid()}"
    out.mkdir(parents=True)
    args = [dcmtk("findscu"), *(["-d"] if debug else []), f"-{model}", *(["-aet", calling] if calling else []),
            "-aec", vault.ae_title, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    run = subprocess.run([*args, "127.0.0.1", str(vault.dicom_port)], capture_output=True, text=True, timeout=60)
    if expect_ok:
        assert run.returncode == 0, run.stdout + run.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], run.stdout + run.stderr


def api_call(vault: "Vault", path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of the operations API: GET, or POST of ``body`` when given."""
    request = urllib.request.Request(f"http://127.0.0.1:{vault.http_port}{path}",
                                     method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_cli(config: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dicomvault.cli", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dicomvault {' '.join(args)} failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    return proc


@dataclass
class Vault:
    """One initialised archive directory, optionally with a running server process."""

    root: Path
    dicom_port: int
    http_port: int
    ae_title: str = "DICOMVAULT"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "serve.log"

    @property
    def config(self) -> Path:
        return self.root / "dicomvault.toml"

    def add_peer(self, name: str, ae_title: str, port: int, permissions: list[str] | None = None,
                 host: str = "127.0.0.1", **extra: object) -> None:
        """Append a ``[peers.NAME]`` table; ``permissions`` None keeps the default (store, commit)."""
        lines = [f"\n[peers.{name}]", f'ae_title = "{ae_title}"', f'host = "{host}"', f"port = {port}"]
        if permissions is not None:
            lines.append("permissions = " + json.dumps(permissions))
        lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
        with self.config.open("a", encoding="utf-8") as config:
            config.write("\n".join(lines) + "\n")

    def refusals(self) -> list[tuple[str, str, str]]:
        """(actor, subject, detail) of the audit log's ``access-denied`` rows, oldest first."""
        db = sqlite3.connect(self.root / "catalog.sqlite3")
        try:
            return db.execute("SELECT actor, subject, detail FROM audit_log WHERE action = 'access-denied'"
                              " ORDER BY id").fetchall()
        finally:
            db.close()

    def set_config(self, section: str, key: str, value: str) -> None:
        """Replace ``key = ...`` inside ``[section]`` of the TOML with a literal TOML value."""
        lines = self.config.read_text().splitlines()
        current = None
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("["):
                current = stripped.strip("[]")
            elif current == section and stripped.split("=")[0].strip() == key:
                lines[i] = f"{key} = {value}"
                break
        else:
            raise AssertionError(f"[{section}] {key} not in config")
        self.config.write_text("\n".join(lines) + "\n")

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, *args, check=check, timeout=timeout)

    def echo(self) -> bool:
        proc = subprocess.run(
            [dcmtk("echoscu"), "-to", "2", "-aec", self.ae_title, "127.0.0.1", str(self.dicom_port)],
            capture_output=True, timeout=10,
        )
        return proc.returncode == 0

    def start(self, timeout: float = 60) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicomvault.cli", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        _STARTED.append(self)

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"dicomvault serve exited ({self.process.returncode}):\n{self.log()}")
            return self.echo()

        wait_until(ready, timeout=timeout, interval=0.1, what="dicomvault C-ECHO")

    def api_token(self) -> str:
        """The ``admin`` token ``init`` wrote for the operations API (``admin:token:admin``)."""
        for line in (self.root / "keys" / "api-tokens").read_text().splitlines():
            if line.startswith("admin:"):
                return line.split(":")[1]
        raise AssertionError("init wrote no admin token")

    def api(self, path: str, token: str | None = None) -> Any:
        """GET /api/... with a bearer token (the admin one by default); JSON, or HTTPError raised."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         headers={"Authorization": f"Bearer {token or self.api_token()}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the crash we must survive."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json", "--verify-audit", check=False).stdout)

    def site_root(self) -> Path:
        """The primary file site's directory."""
        from urllib.parse import unquote, urlparse

        from dicomvault.config import load_settings

        url = urlparse(load_settings(self.config).primary_site_url)
        return Path(unquote(url.netloc + url.path))

    def pending_intents(self) -> list[str]:
        """Write intents and live journal records on the primary file site: objects
        acknowledged but not yet indexed and hardened."""
        return site_staging(self.site_root())

    def wait_settled(self, timeout: float = 30) -> None:
        """Wait until every acknowledged object is in the catalog (its write intent released).

        A DIMSE ack means the object is durable; its catalog row follows a few milliseconds
        later through the group committer, so a test that reads the catalog right after
        storescu returns waits for this first."""
        wait_until(lambda: not self.pending_intents(), timeout=timeout, what="every acknowledged object indexed")


def audit_rows(vault: Vault, action: str) -> list[tuple[str, str, dict]]:
    """(subject, outcome, detail) of the vault's audit events of one action, oldest first."""
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        rows = db.execute("SELECT subject, outcome, detail FROM audit_log WHERE action = ? ORDER BY id",
                          (action,)).fetchall()
    return [(subject, outcome, json.loads(detail)) for subject, outcome, detail in rows]


def site_staging(root: Path) -> list[str]:
    """What a file site holds besides its objects, key records and catalog snapshots: temp files, write
    intents and unreleased write-ahead journal records (``journal/<name>``). Empty once every
    acknowledged object is indexed and hardened."""
    from dicomvault.sites.journal import live_records

    kept = (root / "objects", root / "snapshots", root / "journal", root / "keys")
    found = [
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and not any(folder in p.parents for folder in kept) and p.name != ".health-probe"
    ]
    journal = root / "journal"
    found += [f"journal/{name}" for name in live_records(journal)] if journal.is_dir() else []
    return sorted(found)


_STARTED: list[Vault] = []  # every server the session started


@pytest.fixture(scope="session", autouse=True)
def _stop_started_vaults() -> Iterator[None]:
    """No ``dicomvault serve`` outlives the session, even one a failed test never stopped
    (module-scoped servers are shared by tests, so this cannot be done per test)."""
    yield
    while _STARTED:
        _STARTED.pop().stop()


def make_vault(root: Path) -> Vault:
    vault = Vault(root=root, dicom_port=free_port(), http_port=free_port())
    run = subprocess.run(
        [sys.executable, "-m", "dicomvault.cli", "init", "--dir", str(root)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    vault.set_config("dicom", "port", str(vault.dicom_port))
    vault.set_config("dicom", "bind", '"127.0.0.1"')
    vault.set_config("http", "port", str(vault.http_port))
    vault.set_config("http", "bind", '"127.0.0.1"')
    return vault


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Any]:
    """A freshly initialised archive opened in-process (dicomvault.archive.core.Archive)."""
    from dicomvault.archive.core import Archive
    from dicomvault.config import load_settings

    run = subprocess.run([sys.executable, "-m", "dicomvault.cli", "init", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    opened = Archive.open(load_settings(tmp_path / "dicomvault.toml"))
    yield opened
    opened.close()


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    """An initialised, not yet started archive (call ``vault.start()``)."""
    v = make_vault(tmp_path / "vault")
    yield v
    v.stop()


@pytest.fixture
def running_vault(vault: Vault) -> Vault:
    vault.start()
    return vault


def pydicom_corpus() -> list[Path]:
    """pydicom's own test files plus the pydicom-data package: 250+ files."""
    from pydicom.data import get_testdata_files

    return sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())


@pytest.fixture(scope="session")
def corpus() -> list[Path]:
    files = pydicom_corpus()
    assert len(files) >= 200, f"pydicom test corpus too small ({len(files)}): is pydicom-data installed?"
    return files


@pytest.fixture(scope="session")
def ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def copy_tree(files: list[Path], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        shutil.copy(f, dest / f"{i:04d}_{f.name}")
    return dest


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs mount under tmp_path; always unmounted, even when the test fails."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with tmpfs_mounted(mountpoint):
        yield mountpoint


@contextmanager
def tmpfs_mounted(mountpoint: Path, size: str = "200m") -> Iterator[Path]:
    """A real tmpfs on ``mountpoint`` while the block runs; unmounted (made writable first) after."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mountpoint)], capture_output=True)
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def remount(mountpoint: Path, mode: str) -> None:
    run = subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)], capture_output=True, text=True)
    assert run.returncode == 0, f"remount {mode} failed: {run.stderr}"


def blob(seed: str, size: int = 4096) -> bytes:
    """Deterministic pseudo-random bytes (sealed objects look random too)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])
