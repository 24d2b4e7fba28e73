"""The whole pydicom test corpus through DCMTK storescu and through `dicomvault import`.

DIMSE: DCMTK ``storescu`` sends every file it can read, each in its own transfer syntax (an
association config file proposes, per (SOP Class, Transfer Syntax) pair of the corpus, a
context with exactly that syntax, so nothing is transcoded). The same storescu command line
runs twice: against a bit-preserving DCMTK ``storescp +B`` (the reference for what crossed the
wire; storescu itself drops trailing padding, group lengths...) and against dicomvault. Every
instance dicomvault acknowledged must come back from ``get`` with exactly the reference's
dataset bytes; every refusal must be a DICOM failure status with an ErrorComment saying why,
and nothing refused may reach the catalog.

storescp (DCMTK 3.6.7) cannot bind to one address, so the reference receiver runs in a private
network namespace (``unshare --net``) whose only interface is loopback; dicomvault listens on
127.0.0.1 as usual.

Import: ``dicomvault import`` of a copy of the corpus gives back, with ``get``, whole files
whose SHA-256 equals the originals'; refused files are listed with a reason; a file whose
dataset is already stored is recorded as a duplicate, not as a new version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from conftest import Vault, copy_tree, dcmtk, make_vault

pytestmark = pytest.mark.slow

PROFILE = "CorpusNative"
MAX_CONTEXTS_PER_ASSOCIATION = 120  # storescu's hard limit is 128 presentation contexts
VERIFICATION = "1.2.840.10008.1.1"
# DCMTK leaves Nagle on unless told otherwise; with it every C-STORE waits for a delayed ACK.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SUCCESS = 0x0000
MIN_ACKNOWLEDGED = 180
# An ErrorComment has to say what is wrong, not only quote the offending value.
REASON_WORDS = re.compile(r"\b(no|missing|not a valid|invalid|not valid|cannot|too long|empty|unsupported)\b", re.I)


# --------------------------------------------------------------------------------------------
# Helpers: Part-10 framing (independent of dicomvault's parser), corpus classification
# --------------------------------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}


def split_part10(data: bytes) -> tuple[dict[int, bytes], bytes]:
    """(file meta elements by element number, dataset bytes) of Part-10 bytes or a bare dataset."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        offset = 132
    elif data[:4] == b"DICM":
        offset = 4
    else:
        return {}, data
    meta: dict[int, bytes] = {}
    while offset + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        meta[elem] = data[start : start + length]
        offset = start + length
    return meta, data[offset:]


def meta_text(meta: dict[int, bytes], elem: int) -> str:
    return meta.get(elem, b"").rstrip(b"\x00 ").decode("ascii", "replace")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Sendable:
    path: Path
    sop_class: str
    transfer_syntax: str


def classify(path: Path) -> Sendable | None:
    """SOP Class and native transfer syntax as pydicom sees them; None if it has neither."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            meta = ds.get("file_meta")
            ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
            if not ts:
                implicit, little = ds.original_encoding
                ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            sop_class = str(ds.get("SOPClassUID", "") or "")
            if not sop_class and meta is not None:
                sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        except Exception:  # noqa: BLE001 - README.txt, ICC profiles, JSON... are simply not sendable
            return None
    sop_class, ts = sop_class.strip(), ts.strip()
    if not sop_class or not ts or not re.fullmatch(r"[0-9.]+", sop_class + ts):
        return None
    return Sendable(path, sop_class, ts)


def group_by_contexts(files: list[Sendable]) -> list[tuple[list[tuple[str, str]], list[Sendable]]]:
    """Split into associations of at most MAX_CONTEXTS_PER_ASSOCIATION (class, syntax) pairs."""
    pairs = sorted({(f.sop_class, f.transfer_syntax) for f in files})
    groups = []
    for start in range(0, len(pairs), MAX_CONTEXTS_PER_ASSOCIATION):
        chunk = pairs[start : start + MAX_CONTEXTS_PER_ASSOCIATION]
        wanted = set(chunk)
        groups.append((chunk, [f for f in files if (f.sop_class, f.transfer_syntax) in wanted]))
    return groups


def write_scu_config(path: Path, pairs: list[tuple[str, str]]) -> None:
    """One presentation context per pair, proposing exactly the file's own transfer syntax."""
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", f"[{PROFILE}]"]
    for n, (sop_class, ts) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{n} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", f"[{PROFILE}]", f"PresentationContexts = {PROFILE}"]
    path.write_text("\n".join(lines) + "\n")


def write_scp_config(path: Path, pairs: list[tuple[str, str]]) -> None:
    """storescp accepts each SOP class (one context per class) in every syntax it has in the corpus."""
    by_class: dict[str, set[str]] = defaultdict(set)
    for sop_class, ts in pairs:
        by_class[sop_class].add(ts)
    classes = sorted(by_class)
    lines = ["[[TransferSyntaxes]]", "[Verification]", f"TransferSyntax1 = {ImplicitVRLittleEndian}"]
    for i, sop_class in enumerate(classes):
        lines.append(f"[Class{i}]")
        lines += [f"TransferSyntax{j} = {ts}" for j, ts in enumerate(sorted(by_class[sop_class]), 1)]
    lines += ["[[PresentationContexts]]", f"[{PROFILE}]", f"PresentationContext1 = {VERIFICATION}\\Verification"]
    lines += [f"PresentationContext{i + 2} = {c}\\Class{i}" for i, c in enumerate(classes)]
    lines += ["[[Profiles]]", f"[{PROFILE}]", f"PresentationContexts = {PROFILE}"]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# storescu's debug output
# --------------------------------------------------------------------------------------------


@dataclass
class StoreAttempt:
    path: str
    sent_uid: str | None = None  # Affected SOP Instance UID of the C-STORE-RQ (None: never sent)
    status: int | None = None  # DIMSE status of the C-STORE-RSP (None: no response)
    response_uid: str | None = None
    error_comment: str | None = None
    errors: list[str] = field(default_factory=list)  # storescu's own E:/F:/W: lines for this file


_RQ = re.compile(r"Message Type\s*: C-STORE RQ\b(.*?)END DIMSE MESSAGE", re.S)
_RSP = re.compile(r"Message Type\s*: C-STORE RSP\b(.*?)END DIMSE MESSAGE", re.S)
_UID = re.compile(r"Affected SOP Instance UID\s*: (\S+)")
_STATUS = re.compile(r"DIMSE Status\s*: 0x([0-9A-Fa-f]{4})")
_COMMENT = re.compile(r"\(0000,0902\) \w\w \[(.*)\]\s+#\s*\d+,")


def parse_storescu_debug(log: str) -> list[StoreAttempt]:
    """One StoreAttempt per 'Sending file' of `storescu -d` output, in order."""
    attempts = []
    for block in log.split("I: Sending file: ")[1:]:
        attempt = StoreAttempt(path=block.splitlines()[0].strip())
        attempt.errors = [line for line in block.splitlines() if line.startswith(("E:", "F:", "W:"))]
        rq = _RQ.search(block)
        if rq:
            uid = _UID.search(rq.group(1))
            attempt.sent_uid = uid.group(1) if uid else None
        rsp = _RSP.search(block)
        if rsp:
            uid = _UID.search(rsp.group(1))
            status = _STATUS.search(rsp.group(1))
            attempt.response_uid = uid.group(1) if uid else None
            attempt.status = int(status.group(1), 16) if status else None
            comment = _COMMENT.search(block[rsp.end() :])
            attempt.error_comment = comment.group(1).strip() if comment else None
        attempts.append(attempt)
    return attempts


@dataclass(frozen=True)
class StorescuGroup:
    """One association's worth of files, and the storescu options used for both receivers."""

    options: list[str]
    files: list[str]

    def command(self, called_ae: str, port: int) -> list[str]:
        return [dcmtk("storescu"), *self.options, "-aec", called_ae, "127.0.0.1", str(port), *self.files]


def storescu_group(config: Path, files: list[Sendable]) -> StorescuGroup:
    # -d: per-file request/response dumps (status, ErrorComment); -nh: go on after a failed store.
    return StorescuGroup(["-d", "-nh", "-xf", str(config), PROFILE, "-aet", "CORPUSSCU"], [str(f.path) for f in files])


def run_storescu(group: StorescuGroup, called_ae: str, port: int) -> str:
    proc = subprocess.run(group.command(called_ae, port), capture_output=True, text=True, timeout=300, env=DCMTK_ENV)
    log = proc.stdout + proc.stderr
    assert "Association Accepted" in log, f"storescu could not associate with {called_ae}:{port}:\n{log[-3000:]}"
    return log


# --------------------------------------------------------------------------------------------
# The reference receiver: storescp +B in a network namespace that only has loopback
# --------------------------------------------------------------------------------------------

_REFERENCE_LEG = r'''
import fcntl, json, os, signal, socket, struct, subprocess, sys
job = json.loads(open(sys.argv[1]).read())
sys.path.insert(0, job["tests_dir"])
from conftest import free_port, wait_until

# Bring up loopback: the namespace starts with `lo` down and has no other interface.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS |= IFF_UP
s.close()
port = free_port()
env = dict(os.environ, TCP_NODELAY="1")
scp = subprocess.Popen(
    [job["storescp"], "-xf", job["scp_config"], job["profile"], "+B", "+uf", "-od", job["out"], "-aet", "REFERENCE",
     "-dhl", str(port)],
    stdout=open(job["scp_log"], "w"), stderr=subprocess.STDOUT, env=env,
)


def ready():
    if scp.poll() is not None:
        sys.exit(f"storescp exited with {scp.returncode}: " + open(job["scp_log"]).read())
    echo = [job["echoscu"], "-to", "2", "-aec", "REFERENCE", "127.0.0.1", str(port)]
    return subprocess.run(echo, capture_output=True, env=env).returncode == 0


try:
    wait_until(ready, timeout=30, what="storescp C-ECHO")
    for command, log in zip(job["storescu_commands"], job["logs"]):
        cmd = [str(port) if arg == "{PORT}" else arg for arg in command]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        open(log, "w").write(proc.stdout + proc.stderr)
finally:
    scp.send_signal(signal.SIGTERM)
    try:
        scp.wait(timeout=20)
    except subprocess.TimeoutExpired:
        scp.kill()
        scp.wait()
'''


def _namespace_prefix() -> list[str]:
    """`unshare` flags that give us a private network namespace here (root or unprivileged)."""
    unshare = shutil.which("unshare")
    for prefix in ([unshare, "--net", "--map-root-user"], [unshare, "--net"]) if unshare else ():
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.fail(
        "cannot create a private network namespace (unshare --net): storescp 3.6.7 always listens on every "
        "interface, and these tests only listen on loopback"
    )


def run_reference(tmp: Path, scp_config: Path, groups: list[StorescuGroup]) -> tuple[list[str], Path]:
    """Run every storescu group against storescp +B; return the storescu logs and the output folder."""
    out = tmp / "reference"
    out.mkdir()
    job = {
        "storescp": dcmtk("storescp"), "storescu": dcmtk("storescu"), "echoscu": dcmtk("echoscu"),
        "profile": PROFILE, "out": str(out), "scp_log": str(tmp / "storescp.log"),
        "tests_dir": str(Path(__file__).resolve().parent),
        "scp_config": str(scp_config),
        "storescu_commands": [g.command("REFERENCE", "{PORT}") for g in groups],  # type: ignore[arg-type]
        "logs": [str(tmp / f"reference-{i}.log") for i in range(len(groups))],
    }
    job_file = tmp / "reference-job.json"
    job_file.write_text(json.dumps(job))
    script = tmp / "reference_leg.py"
    script.write_text(_REFERENCE_LEG)
    proc = subprocess.run([*_namespace_prefix(), sys.executable, str(script), str(job_file)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"reference leg failed: {proc.stdout}\n{proc.stderr}"
    return [Path(log).read_text() for log in job["logs"]], out


# --------------------------------------------------------------------------------------------
# Many `dicomvault get` calls: the real CLI entry point, looped in one interpreter
# --------------------------------------------------------------------------------------------

_CLI_BATCH = r'''
import json, sys
from dicomvault.cli.app import main
codes = []
for args in json.loads(open(sys.argv[1]).read()):
    sys.argv = ["dicomvault", *args]
    try:
        main()
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code if isinstance(exc.code, int) else 1)
print("CLI-BATCH-CODES " + json.dumps(codes))
'''


def cli_batch(vault: Vault, tmp: Path, calls: list[list[str]]) -> list[int]:
    """Run `dicomvault ARGS --config ...` for each call via dicomvault.cli.app.main in one process.

    Each CLI process spends ~2.5 s importing; the corpus has dozens of studies.
    """
    calls_file = tmp / f"cli-batch-{len(list(tmp.glob('cli-batch-*')))}.json"
    calls_file.write_text(json.dumps([[*c, "--config", str(vault.config)] for c in calls]))
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_BATCH, str(calls_file)], capture_output=True, text=True, timeout=600
    )
    match = re.search(r"^CLI-BATCH-CODES (.*)$", proc.stdout, re.M)
    assert proc.returncode == 0 and match, f"CLI batch crashed ({proc.returncode}): {proc.stderr[-3000:]}"
    codes = json.loads(match.group(1))
    assert len(codes) == len(calls)
    return codes


_VERSIONED = re.compile(r"^(?P<uid>.+)\.v(?P<version>\d+)\.dcm$")


def retrieve_all(vault: Vault, tmp: Path, study_uids: list[str], name: str) -> dict[str, dict[int, bytes]]:
    """`get STUDY --all-versions` for every study: {SOP Instance UID: {version: file bytes}}."""
    out = tmp / name
    calls = [["get", uid, "--out", str(out / str(i)), "--all-versions"] for i, uid in enumerate(study_uids)]
    codes = cli_batch(vault, tmp, calls)
    failed = [uid for uid, code in zip(study_uids, codes) if code != 0]
    assert not failed, f"`dicomvault get --all-versions` failed for studies listed by `find`: {failed}"
    versions: dict[str, dict[int, bytes]] = defaultdict(dict)
    for path in out.rglob("*.dcm"):
        m = _VERSIONED.match(path.name)
        assert m, f"unexpected file name from get --all-versions: {path}"
        version = int(m.group("version"))
        assert version not in versions[m.group("uid")], f"{m.group('uid')} v{version} written twice"
        versions[m.group("uid")][version] = path.read_bytes()
    return versions


def find_studies(vault: Vault) -> list[dict]:
    rows = json.loads(vault.cli("find", "--json", "--limit", "100000").stdout)
    assert isinstance(rows, list)
    return rows


# --------------------------------------------------------------------------------------------
# DIMSE: one storescu run against storescp +B, one against dicomvault (module-scoped: ~20 s)
# --------------------------------------------------------------------------------------------


def crafted_bad_files(ct_small: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Instances every archive must refuse: {SOP Instance UID: (file, attribute the refusal must name)}."""
    folder.mkdir()
    crafted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(ct_small)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["dicomvault test_corpus missing study uid"])
        del ds.StudyInstanceUID
        path = folder / "missing_study_uid.dcm"
        ds.save_as(path, enforce_file_format=True)
        crafted[ds.SOPInstanceUID] = (path, "StudyInstanceUID")

        ds = pydicom.dcmread(ct_small)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["dicomvault test_corpus bad series uid"])
        ds.SeriesInstanceUID = "1.2.840.bad"
        path = folder / "invalid_series_uid.dcm"
        ds.save_as(path, enforce_file_format=True)
        crafted[ds.SOPInstanceUID] = (path, "SeriesInstanceUID")
    return crafted


@dataclass(repr=False)
class DimseRun:
    vault: Vault
    tmp: Path
    sendable: list[Sendable]
    unsendable: list[Path]
    crafted: dict[str, tuple[Path, str]]
    reference: list[StoreAttempt]
    archive: list[StoreAttempt]
    reference_files: dict[str, set[tuple[str, bytes]]] = field(default_factory=dict)  # uid -> {(ts, dataset)}

    def __repr__(self) -> str:  # keep pytest's failure reports readable
        return f"DimseRun({len(self.sendable)} sendable files, {len(self.archive)} storescu reports, {self.tmp})"


@pytest.fixture(scope="module")
def dimse_run(corpus: list[Path], ct_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseRun]:
    tmp = tmp_path_factory.mktemp("corpus_dimse")
    crafted = crafted_bad_files(ct_small, tmp / "crafted")
    candidates = [*corpus, *(path for path, _ in crafted.values())]
    classified = [(p, classify(p)) for p in candidates]
    sendable = [s for _, s in classified if s is not None]
    unsendable = [p for p, s in classified if s is None]
    groups = []
    for i, (pairs, files) in enumerate(group_by_contexts(sendable)):
        scu_cfg = tmp / f"storescu-{i}.cfg"
        write_scu_config(scu_cfg, pairs)
        groups.append(storescu_group(scu_cfg, files))
    scp_cfg = tmp / "storescp.cfg"
    write_scp_config(scp_cfg, sorted({(f.sop_class, f.transfer_syntax) for f in sendable}))

    reference_logs, reference_out = run_reference(tmp, scp_cfg, groups)

    vault = make_vault(tmp / "vault")
    vault.start()
    try:
        archive_logs = [run_storescu(group, vault.ae_title, vault.dicom_port) for group in groups]
        vault.wait_settled()
        for i, log in enumerate(archive_logs):
            (tmp / f"archive-{i}.log").write_text(log)
        for log in reference_logs:
            assert "Association Accepted" in log, f"storescu could not associate with storescp:\n{log[-3000:]}"
        run = DimseRun(
            vault=vault, tmp=tmp, sendable=sendable, unsendable=unsendable, crafted=crafted,
            reference=[a for log in reference_logs for a in parse_storescu_debug(log)],
            archive=[a for log in archive_logs for a in parse_storescu_debug(log)],
        )
        for path in reference_out.iterdir():
            meta, dataset = split_part10(path.read_bytes())
            uid = meta_text(meta, 0x0003)
            assert uid, f"storescp wrote {path} without MediaStorageSOPInstanceUID"
            run.reference_files.setdefault(uid, set()).add((meta_text(meta, 0x0010), dataset))
        yield run
    finally:
        vault.stop()


def test_storescu_sends_the_corpus_in_native_syntaxes_and_the_archive_acknowledges_it(dimse_run: DimseRun) -> None:
    run = dimse_run
    # Both legs ran the same command lines over the same files, so they saw the same sequence of files.
    assert [a.path for a in run.archive] == [a.path for a in run.reference]
    assert len(run.archive) == len(run.sendable), "storescu did not report on every file it was given"
    sent = [a for a in run.archive if a.sent_uid is not None]
    assert [a.sent_uid for a in sent] == [a.sent_uid for a in run.reference if a.sent_uid is not None]
    # Whatever storescu could read went out: nothing failed for want of a presentation context.
    assert len(sent) >= 190, f"only {len(sent)} of {len(run.sendable)} files were sent"
    negotiation = [f"{a.path}: {a.errors}" for a in run.archive
                   if any(re.search(r"presentation context|unable to convert", e, re.I) for e in a.errors)]
    assert not negotiation, "files not sent in their own transfer syntax:\n" + "\n".join(negotiation)
    unanswered = [a.path for a in sent if a.status is None]
    assert not unanswered, f"no C-STORE response for: {unanswered}"
    for a in sent:
        assert a.response_uid == a.sent_uid, f"response for {a.path} names {a.response_uid}, not {a.sent_uid}"
    # The bit-preserving reference accepted everything, so it is a reference for every instance.
    not_in_reference = [a.path for a in run.reference if a.sent_uid is not None and a.status != SUCCESS]
    assert not not_in_reference, f"storescp did not accept: {not_in_reference}"
    acknowledged = [a for a in sent if a.status == SUCCESS]
    assert len(acknowledged) >= MIN_ACKNOWLEDGED, f"dicomvault acknowledged only {len(acknowledged)} of {len(sent)}"
    # Native syntaxes really went over the wire: compressed ones included.
    compressed = {f.transfer_syntax for f in run.sendable if f.transfer_syntax.startswith("1.2.840.10008.1.2.4")
                  or f.transfer_syntax == "1.2.840.10008.1.2.5"}
    received = {ts for versions in run.reference_files.values() for ts, _ in versions}
    assert len(compressed) >= 5 and compressed <= received, f"compressed syntaxes not received: {compressed - received}"


def test_refused_instances_get_a_failure_status_that_names_the_reason(dimse_run: DimseRun) -> None:
    run = dimse_run
    refused = [a for a in run.archive if a.sent_uid is not None and a.status != SUCCESS]
    by_uid = {a.sent_uid: a for a in refused}
    for uid, (path, attribute) in run.crafted.items():
        assert uid in by_uid, f"dicomvault acknowledged {path.name}, which has a {attribute} problem"
        attempt = by_uid[uid]
        assert attempt.status == 0xC000, f"{path.name}: status {attempt.status:#06x}, expected 0xC000"
        assert attempt.error_comment and attribute in attempt.error_comment, (
            f"{path.name}: ErrorComment {attempt.error_comment!r} does not name {attribute}"
        )
    problems = []
    for a in refused:
        if not (a.status in (0xA700, 0x0110) or (a.status or 0) >> 12 in (0xA, 0xC)):
            problems.append(f"{a.path}: status {a.status:#06x} is not a failure status")
        if not a.error_comment:
            problems.append(f"{a.path}: status {a.status:#06x} without ErrorComment (0000,0902)")
        elif not REASON_WORDS.search(a.error_comment):
            problems.append(f"{a.path}: ErrorComment {a.error_comment!r} does not say what is wrong")
    assert not problems, "refusals that do not name their reason:\n" + "\n".join(problems)


def test_acknowledged_instances_are_cataloged_and_come_back_byte_exact(dimse_run: DimseRun) -> None:
    run = dimse_run
    sent = [a for a in run.archive if a.sent_uid is not None]
    acknowledged = {a.sent_uid for a in sent if a.status == SUCCESS}
    refused_only = {a.sent_uid for a in sent if a.status != SUCCESS} - acknowledged
    mixed = {a.sent_uid for a in sent if a.status != SUCCESS} & acknowledged

    studies = find_studies(run.vault)
    assert sum(row["instances"] for row in studies) == len(acknowledged), (
        "the catalog does not hold exactly the acknowledged instances"
    )
    versions = retrieve_all(run.vault, run.tmp, [row["study_uid"] for row in studies], "dimse-get")
    missing = acknowledged - versions.keys()
    assert not missing, f"acknowledged but not retrievable: {sorted(missing)}"
    assert not refused_only & versions.keys(), f"refused but cataloged: {sorted(refused_only & versions.keys())}"
    assert versions.keys() == acknowledged

    mismatched = []
    for uid in sorted(acknowledged):
        got = set()
        for version, data in versions[uid].items():
            meta, dataset = split_part10(data)
            assert meta_text(meta, 0x0003) == uid, f"{uid} v{version}: file meta names {meta_text(meta, 0x0003)}"
            got.add((meta_text(meta, 0x0010), dataset))
        wire = run.reference_files.get(uid, set())
        # Every transmission of the UID was acknowledged: the versions are exactly what came in.
        if uid not in mixed and got != wire:
            mismatched.append(uid)
        # Some transmissions refused: what is stored must still be what came in.
        elif uid in mixed and not (got and got <= wire):
            mismatched.append(uid)
    assert not mismatched, f"{len(mismatched)} instance(s) not byte-identical to what crossed the wire: {mismatched}"


# --------------------------------------------------------------------------------------------
# dicomvault import
# --------------------------------------------------------------------------------------------


def file_uid(path: Path) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SOPInstanceUID"])
            return str(ds.get("SOPInstanceUID", "") or "").strip() or None
        except Exception:  # noqa: BLE001
            return None


def content_key(path: Path, data: bytes) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes): what makes two files the same stored instance version."""
    meta, dataset = split_part10(data)
    ts = meta_text(meta, 0x0010)
    if not ts:  # a bare dataset: the syntax it is actually encoded in
        sendable = classify(path)
        ts = sendable.transfer_syntax if sendable else ""
    return ts, dataset


def test_import_then_get_returns_the_original_files(vault: Vault, corpus: list[Path], tmp_path: Path) -> None:
    folder = copy_tree(corpus, tmp_path / "corpus")
    originals = sorted(folder.iterdir())  # the import walks a folder in sorted order
    report = json.loads(vault.cli("import", "--json", str(folder)).stdout)

    refused = {Path(r["path"]).name: r["reason"] for r in report["refused"]}
    assert report["stored"] + report["duplicates"] + len(report["refused"]) == len(originals)
    assert set(refused) <= {p.name for p in originals}
    assert report["stored"] >= 200, f"import stored only {report['stored']} of {len(originals)} files"
    blank = [name for name, reason in refused.items() if not reason.strip()]
    assert not blank, f"refused without a reason: {blank}"

    studies = find_studies(vault)
    all_versions = retrieve_all(vault, tmp_path, [row["study_uid"] for row in studies], "import-get")
    assert sum(len(v) for v in all_versions.values()) == report["stored"], "one version per stored file"

    # Expected versions per SOP Instance UID, from the files in import order: a file whose content is
    # already stored under its UID is a duplicate, any other file is that UID's next version.
    expected: dict[str, list[tuple[str, bytes]]] = defaultdict(list)  # uid -> [(file name, bytes)] per version
    keys: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    duplicates = []
    unattributed = []
    for path in originals:
        if path.name in refused:
            continue
        data = path.read_bytes()
        uid = file_uid(path)
        if uid is None:
            unattributed.append(path.name)
            continue
        key = content_key(path, data)
        if key in keys[uid]:
            duplicates.append(path.name)
        else:
            keys[uid].append(key)
            expected[uid].append((path.name, data))
    assert not unattributed, f"stored, but pydicom finds no SOP Instance UID in: {unattributed}"
    assert len(duplicates) == report["duplicates"], (
        f"files whose dataset was already stored: {duplicates}; the report counts {report['duplicates']} duplicates"
    )

    wrong = []
    for uid, files in expected.items():
        have = {v: sha256(data) for v, data in all_versions.get(uid, {}).items()}
        want = {v: sha256(data) for v, (_name, data) in enumerate(files, 1)}
        if have != want:
            names = [name for name, _ in files]
            wrong.append(f"{uid}: files {names} -> expected {len(want)} version(s), got {sorted(have)}; SHA-256 differ")
    assert not wrong, f"{len(wrong)} instance(s) not returned bit-for-bit:\n" + "\n".join(wrong[:20])
    assert all_versions.keys() == expected.keys()

    # Without --all-versions, `get` returns the latest version: the last distinct file imported.
    latest_dir = tmp_path / "latest"
    codes = cli_batch(vault, tmp_path, [["get", row["study_uid"], "--out", str(latest_dir / str(i))]
                                        for i, row in enumerate(studies)])
    assert codes == [0] * len(studies)
    latest = {p.name[: -len(".dcm")]: sha256(p.read_bytes()) for p in latest_dir.rglob("*.dcm")}
    assert latest == {uid: sha256(files[-1][1]) for uid, files in expected.items()}

    # Refused files left nothing behind under their UID (unless another file with it was stored).
    refused_uids = sorted({u for name in refused if (u := file_uid(folder / name)) and u not in expected})
    if refused_uids:
        codes = cli_batch(vault, tmp_path, [["get", uid, "--out", str(tmp_path / "refused")] for uid in refused_uids])
        leaked = [uid for uid, code in zip(refused_uids, codes) if code == 0]
        assert not leaked, f"refused by import, yet retrievable: {leaked}"
