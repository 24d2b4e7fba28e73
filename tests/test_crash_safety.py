"""Promise 1 under SIGKILL: every instance DCMTK `storescu` saw acknowledged survives a crash.

Four DCMTK `storescu` processes send 500 small CT instances over four concurrent associations
(so several stores are in flight at any instant). Their ``-v`` output is read line by line as
it is produced; once the requested number of ``Received Store Response (Success)`` lines has
been seen, the server's process group gets SIGKILL. After a restart (which runs crash
recovery) the test checks:

* every acknowledged instance comes back from ``dicomvault get`` with byte-exact dataset bytes;
* every object file on the site opens and authenticates with the vault's keys, ``tmp/`` is
  empty, and the objects and the catalog's version rows are the same set (no orphan row, no
  unindexed object), each row's object restoring to the SHA-256 the row records;
* the audit chain verifies (``dicomvault audit verify`` and ``status --verify-audit``) and
  every stored version has its own audit row;
* re-sending what was not acknowledged (what a PACS does next) completes the archive with
  exactly 500 instances and 500 versions: an object adopted by recovery is not stored twice.

Kill points are reached by counting acknowledgements, never by sleeping.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset
from sqlalchemy import func, select

from conftest import Vault, dcmtk, free_port, make_vault, site_staging, wait_until

N_INSTANCES = 500
N_SENDERS = 4
STUDIES = 3
SERIES_PER_STUDY = 2

# Random-ish kill point, fixed at import so it appears in the test id and can be re-run.
_RANDOM_KILL = random.Random().randrange(10, N_INSTANCES - 20)
KILL_POINTS = [
    pytest.param(50, id="after-50-acks"),
    pytest.param(200, id="after-200-acks"),
    pytest.param(400, id="after-400-acks"),
    pytest.param(_RANDOM_KILL, id=f"after-{_RANDOM_KILL}-acks-random"),
]


@dataclass(frozen=True)
class Instance:
    path: Path
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    dataset: bytes  # the dataset bytes after the file meta: what crosses the wire


def dataset_of(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes) of a Part-10 file, located by pynetdicom, not dicomvault."""
    meta, offset = split_dataset(path)
    return str(meta.TransferSyntaxUID), path.read_bytes()[offset:]


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory, ct_small: Path) -> list[Instance]:
    """500 copies of CT_small with fresh UIDs over 3 studies x 2 series, without the trailing
    (FFFC,FFFC) padding storescu would drop (so wire bytes equal the file's dataset bytes)."""
    root = tmp_path_factory.mktemp("crash-instances")
    template = pydicom.dcmread(ct_small)
    del template[0xFFFCFFFC]
    studies = []
    for s in range(STUDIES):
        series = [generate_uid() for _ in range(SERIES_PER_STUDY)]
        studies.append((generate_uid(), series, f"CRASH{s}"))
    made = []
    for i in range(N_INSTANCES):
        study_uid, series_uids, patient = studies[i % STUDIES]
        series_uid = series_uids[(i // STUDIES) % SERIES_PER_STUDY]
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = patient
        ds.InstanceNumber = i + 1
        path = root / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        ts, data = dataset_of(path)
        made.append(Instance(path, ds.SOPInstanceUID, study_uid, series_uid, ts, data))
    assert len({i.sop_uid for i in made}) == N_INSTANCES
    return made


@pytest.fixture(scope="module")
def vault_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `dicomvault init`, copied for every test (init costs seconds; the copies are independent)."""
    return make_vault(tmp_path_factory.mktemp("crash-template") / "vault").root


@pytest.fixture
def crash_vault(vault_template: Path, tmp_path: Path) -> Iterator[Vault]:
    root = tmp_path / "vault"
    shutil.copytree(vault_template, root)
    v = Vault(root=root, dicom_port=free_port(), http_port=free_port())
    v.set_config("dicom", "port", str(v.dicom_port))
    v.set_config("http", "port", str(v.http_port))
    (root / "serve.log").unlink(missing_ok=True)
    yield v
    v.kill()


@dataclass
class Senders:
    """Several storescu processes whose -v output is parsed as it arrives."""

    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    acked: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    output: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reached: threading.Event = field(default_factory=threading.Event)
    target: int = 0

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        current: Path | None = None
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            self.output[index].append(line)
            if line.startswith("I: Sending file: "):
                current = Path(line[len("I: Sending file: ") :])
            elif "Received Store Response" in line:
                assert current is not None, f"response before any file in storescu output: {line}"
                with self.lock:
                    if line.endswith("(Success)"):
                        self.acked.append(current)
                        if self.target and len(self.acked) >= self.target:
                            self.reached.set()
                    else:
                        self.refused.append((current, line))
                current = None

    def wait(self, timeout: float = 120) -> None:
        for proc in self.procs:
            proc.wait(timeout=timeout)
        for thread in self.threads:
            thread.join(timeout=timeout)
            assert not thread.is_alive(), "storescu output reader did not finish"

    def transcript(self, index: int) -> str:
        return "\n".join(self.output[index][-15:])


def start_senders(vault: Vault, files: list[Path], count: int, kill_after: int = 0) -> Senders:
    senders = Senders(target=kill_after)
    for index in range(count):
        chunk = files[index::count]
        if not chunk:
            continue
        proc = subprocess.Popen(
            [dcmtk("storescu"), "-v", "-to", "10", "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port),
             *map(str, chunk)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        senders.procs.append(proc)
        senders.output.append([])
        thread = threading.Thread(target=senders._read, args=(len(senders.procs) - 1, proc), daemon=True)
        thread.start()
        senders.threads.append(thread)
    return senders


def staging_leftovers(site) -> list[str]:
    """Temp files, write intents and live journal records on the site (conftest.site_staging)."""
    return site_staging(site.root)


def check_archive_consistent(vault: Vault, expected: dict[str, Instance], settle: bool = False) -> set[str]:
    """Objects on the site == version rows; every object authenticates; no temp file or
    write intent is left beside them (at once after a restart, whose recovery releases them
    synchronously; with ``settle``, once the server's background release has run).

    Returns the SOP Instance UIDs the catalog holds.
    """
    from dicomvault.archive.core import Archive
    from dicomvault.catalog import schema as t
    from dicomvault.config import load_settings
    from dicomvault.sites.file import FileSite

    archive = Archive.open(load_settings(vault.config))
    try:
        site = archive.site
        assert isinstance(site, FileSite)
        if settle:
            wait_until(lambda: not staging_leftovers(site), timeout=30, what="write intents to be released")
        leftovers = staging_leftovers(site)
        assert leftovers == [], f"{len(leftovers)} leftover file(s) outside objects/ after restart: {leftovers[:5]}"

        names = list(site.list())
        assert len(names) == len(set(names))
        for name in names:
            # IntegrityError here = a partial or damaged object survived the crash
            metadata, original = archive.repository.load(name)
            sop = metadata["attributes"]["sop_instance_uid"]
            assert sop in expected, f"object {name} holds an instance nobody sent: {sop}"
            inst = expected[sop]
            assert original[metadata["dataset_offset"] :] == inst.dataset, f"object {name} ({sop}) is not byte-exact"

        versions = archive.catalog.all_versions()
        rows = {v.object_id: v for v in versions}
        assert len(rows) == len(versions)
        orphan_rows = sorted(set(rows) - set(names))
        assert not orphan_rows, f"{len(orphan_rows)} catalog row(s) without an object: {orphan_rows[:5]}"
        unindexed = sorted(set(names) - set(rows))
        assert not unindexed, f"{len(unindexed)} complete object(s) never indexed after recovery: {unindexed[:5]}"
        for record in versions:
            metadata, _ = archive.repository.load(record.object_id, record.sha256)
            assert metadata["attributes"]["sop_instance_uid"] == record.sop_instance_uid
            assert record.study_uid == expected[record.sop_instance_uid].study_uid

        per_instance = Counter(v.sop_instance_uid for v in versions)
        doubled = [sop for sop, n in per_instance.items() if n != 1]
        assert not doubled, f"instances stored as more than one version: {doubled[:5]}"

        with archive.catalog.read() as conn:
            audited = conn.execute(
                select(func.count()).select_from(t.audit_log).where(
                    t.audit_log.c.action.in_(("store", "recover")), t.audit_log.c.outcome == "success"
                )
            ).scalar()
        assert audited == len(versions), f"{len(versions)} versions but {audited} store/recover audit rows"
        return set(per_instance)
    finally:
        archive.close()


def cli_concurrently(vault: Vault, commands: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """Run several `dicomvault` commands at once (each is a Python start-up: seconds)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dicomvault.cli", *args, "--config", str(vault.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for args in commands
    ]
    results = []
    for args, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    return results


def check_after_restart(vault: Vault, acked: list[Instance], out: Path) -> None:
    """`dicomvault get` once per study (all acknowledged instances byte-exact), `audit verify`
    and `status --verify-audit`, run side by side."""
    studies = sorted({i.study_uid for i in acked})
    commands = [("get", uid, "--out", str(out / uid)) for uid in studies]
    commands += [("audit", "verify"), ("status", "--json", "--verify-audit")]
    *gets, verify, status = cli_concurrently(vault, commands)
    for uid, run in zip(studies, gets):
        assert run.returncode == 0, f"get {uid} failed after the crash: {run.stderr}{run.stdout}"
    assert verify.returncode == 0, f"audit verify failed after the crash: {verify.stderr}{verify.stdout}"
    assert json.loads(status.stdout)["audit"]["chain_ok"] is True, status.stdout

    got: dict[str, Path] = {}
    for path in out.rglob("*.dcm"):
        sop = path.name[: -len(".dcm")]
        assert sop not in got, f"{sop} retrieved twice"
        got[sop] = path
    missing = [i.sop_uid for i in acked if i.sop_uid not in got]
    assert not missing, f"{len(missing)} acknowledged instance(s) lost by the crash: {missing[:5]}"
    for inst in acked:
        ts, data = dataset_of(got[inst.sop_uid])
        assert ts == inst.transfer_syntax, inst.sop_uid
        assert data == inst.dataset, f"acknowledged instance {inst.sop_uid} came back with different bytes"


@pytest.mark.parametrize("kill_after", KILL_POINTS)
def test_sigkill_during_storescu_loses_nothing_acknowledged(
    crash_vault: Vault, instances: list[Instance], kill_after: int, tmp_path: Path
) -> None:
    vault = crash_vault
    by_path = {i.path: i for i in instances}
    by_sop = {i.sop_uid: i for i in instances}
    vault.start()

    senders = start_senders(vault, [i.path for i in instances], N_SENDERS, kill_after=kill_after)
    finished_early = not senders.reached.wait(timeout=120)
    killed_at = len(senders.acked)
    vault.kill()
    senders.wait()
    assert not finished_early, (
        f"only {len(senders.acked)} acknowledgements before the senders stopped (wanted {kill_after}):\n"
        + senders.transcript(0)
    )
    assert not senders.refused, f"server refused instances before the crash: {senders.refused[:3]}"
    acked = [by_path[p] for p in senders.acked]
    assert len({i.sop_uid for i in acked}) == len(acked)
    assert kill_after <= killed_at < N_INSTANCES
    # The kill really interrupted the senders: at least one of them did not finish cleanly.
    assert any(p.returncode != 0 for p in senders.procs), "every storescu exited 0: the kill came too late"

    vault.start()  # runs Ingestor.recover() before answering C-ECHO
    check_after_restart(vault, acked, tmp_path / "got")
    in_catalog = check_archive_consistent(vault, by_sop)
    assert {i.sop_uid for i in acked} <= in_catalog

    # What a PACS does next: send again everything that was not acknowledged.
    rest = [i.path for i in instances if i.path not in set(senders.acked)]
    resend = start_senders(vault, rest, N_SENDERS)
    resend.wait(timeout=300)
    for index, proc in enumerate(resend.procs):
        assert proc.returncode == 0, f"re-send after recovery failed:\n{resend.transcript(index)}"
    assert not resend.refused, resend.refused[:3]
    assert sorted(resend.acked) == sorted(rest)

    in_catalog = check_archive_consistent(vault, by_sop, settle=True)
    assert in_catalog == set(by_sop)
    status = vault.status()
    assert status["counts"]["instances"] == N_INSTANCES
    assert status["counts"]["versions"] == N_INSTANCES, "a recovered instance was stored again as a new version"
    assert status["counts"]["studies"] == STUDIES
    assert status["counts"]["series"] == STUDIES * SERIES_PER_STUDY
    assert status["audit"]["chain_ok"] is True, status["audit"]
    assert "Traceback" not in vault.log(), vault.log()[-3000:]
