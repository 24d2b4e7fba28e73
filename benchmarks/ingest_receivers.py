"""The three C-STORE receivers ``benchmarks/ingest`` compares, each in a fresh directory per run.

Every receiver runs in its own session (process group) so ``stop`` can end it and anything it
forked; readiness is awaited by polling (C-ECHO with DCMTK echoscu, or Orthanc's GET /system).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DCMTK = Path("/usr/bin")
ORTHANC = Path("/usr/sbin/Orthanc")


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK tool: pynetdicom puts Python apps with the same names on PATH."""
    path = DCMTK / tool
    if not path.is_file():
        raise SystemExit(f"DCMTK tool {path} is missing (apt-get install dcmtk)")
    return str(path)


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK-based processes (storescu, storescp, Orthanc): Nagle off."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def echo(ae_title: str, port: int) -> bool:
    proc = subprocess.run(
        [dcmtk("echoscu"), "-to", "2", "-aet", "BENCH", "-aec", ae_title, "127.0.0.1", str(port)],
        capture_output=True, timeout=15, env=dcmtk_env(),
    )
    return proc.returncode == 0


class Receiver:
    """One receiver instance: ``start`` in a fresh directory, ``count`` what it stored, ``stop``."""

    name = "?"
    ae_title = "ANY-SCP"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=cwd,
            )
        finally:
            log.close()

    def _alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"{self.name} exited ({code}) before it was ready:\n{self.log_tail()}")
        return True

    def _wait_echo(self, timeout: float = 60) -> None:
        wait_until(lambda: self._alive() and echo(self.ae_title, self.port), timeout, f"{self.name} C-ECHO", 0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def stop(self, timeout: float = 30) -> None:
        proc = self.process
        if proc is None:
            return
        self.process = None
        try:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=timeout)
            # Children (storescp --fork) share the group: make sure none outlives the run.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        except ProcessLookupError:
            pass


class DicomVault(Receiver):
    """``dicomvault serve`` with its defaults (fsync, zstd, AES-GCM), initialised per run."""

    name = "dicomvault"
    ae_title = "DICOMVAULT"

    def __init__(self, workdir: Path, profile_cmd: list[str] | None = None, extra_toml: str = "",
                 settings: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(workdir)
        self.root = workdir / "vault"
        self.http_port = 0
        self.profile_cmd = profile_cmd or []
        self.extra_toml = extra_toml  # appended to dicomvault.toml before start (e.g. [peers.X])
        self.settings = settings or []  # (section, key, TOML value) replaced in dicomvault.toml

    @property
    def config(self) -> Path:
        return self.root / "dicomvault.toml"

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicomvault.cli", *args], capture_output=True, text=True, timeout=600,
        )

    def _set(self, section: str, key: str, value: str) -> None:
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
            raise RuntimeError(f"[{section}] {key} not found in {self.config}")
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        init = self._cli("init", "--dir", str(self.root))
        if init.returncode != 0:
            raise RuntimeError(f"dicomvault init failed ({init.returncode}): {init.stderr}{init.stdout}")
        self.port, self.http_port = free_port(), free_port()
        self._set("dicom", "port", str(self.port))
        self._set("dicom", "bind", '"127.0.0.1"')
        self._set("http", "port", str(self.http_port))
        self._set("http", "bind", '"127.0.0.1"')
        for section, key, value in self.settings:
            self._set(section, key, value)
        if self.extra_toml:
            with self.config.open("a") as config:
                config.write("\n" + self.extra_toml + "\n")
        argv = [sys.executable, "-m", "dicomvault.cli", "serve", "--config", str(self.config)]
        self._spawn([*self.profile_cmd, *argv] if self.profile_cmd else argv)
        self._wait_echo(timeout=120 if self.profile_cmd else 60)

    def settled(self, timeout: float = 300) -> float:
        """When everything acknowledged is indexed and hardened (the journal holds no live
        record): a perf_counter() instant, for the 'settled' column."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=5) as answer:
                    body = json.loads(answer.read())
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read() or b"{}")
            if body.get("journal_pending", 0) == 0:
                return time.perf_counter()
            time.sleep(0.01)  # polling an external process's state, not synchronising our own
        raise RuntimeError(f"journal records still pending after {timeout:.0f} s")

    def count(self) -> int:
        proc = self._cli("status", "--json", "--config", str(self.config))
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"dicomvault status --json gave no JSON ({proc.returncode}): {proc.stderr}") from exc
        return int(report["counts"]["instances"])

    def stop(self, timeout: float = 60) -> None:
        # SIGINT first when profiling so py-spy writes its output; plain SIGTERM otherwise.
        if self.profile_cmd and self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        super().stop(timeout)


class Orthanc(Receiver):
    """The Debian Orthanc 1.10.1 with defaults, apart from loopback ports and a temp storage dir."""

    name = "orthanc"
    ae_title = "ORTHANC"

    def __init__(self, workdir: Path, extra_config: dict | None = None, dicom_port: int = 0) -> None:
        super().__init__(workdir)
        self.http_port = 0
        self.extra_config = dict(extra_config or {})  # e.g. DicomModalities for Q/R peers
        self.fixed_port = dicom_port  # 0: a free one at every start

    def start(self) -> None:
        self.port, self.http_port = self.fixed_port or free_port(), free_port()
        storage = self.workdir / "orthanc-storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicomvault-bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            **self.extra_config,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self._spawn([str(ORTHANC), str(path)], env=dcmtk_env(), cwd=self.workdir)

        def ready() -> bool:
            self._alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system", timeout=2) as r:
                    return r.status == 200 and "Version" in json.load(r)
            except (urllib.error.URLError, OSError, ValueError):
                return False

        wait_until(ready, 60, "Orthanc GET /system", 0.1)

    def count(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/statistics", timeout=30) as r:
            return int(json.load(r)["CountInstances"])


class StoreScp(Receiver):
    """DCMTK storescp writing plain Part-10 files, all transfer syntaxes accepted.

    ``fork=True`` (the default of the benchmark) serves each association in its own process,
    so four associations really run in parallel; storescp's default single-process mode
    would serve them one after another.
    """

    name = "storescp"
    ae_title = "STORESCP"

    def __init__(self, workdir: Path, fork: bool = True) -> None:
        super().__init__(workdir)
        self.out = workdir / "storescp-out"
        self.fork = fork

    def start(self) -> None:
        self.port = free_port()
        self.out.mkdir(parents=True, exist_ok=True)
        argv = [dcmtk("storescp"), "-aet", self.ae_title, "-od", str(self.out), "+xa", "-dhl"]
        if self.fork:
            argv.append("--fork")
        self._spawn([*argv, str(self.port)], env=dcmtk_env())
        self._wait_echo()

    def count(self) -> int:
        return sum(1 for entry in os.scandir(self.out) if entry.is_file())


RECEIVERS = {"dicomvault": DicomVault, "orthanc": Orthanc, "storescp": StoreScp}


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
