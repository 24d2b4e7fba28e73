"""The DICOM front door under load and abuse, against a real `dicomvault serve` and DCMTK.

- An instance over ``[dicom] max_instance_bytes`` is refused (0xA700) and nothing of it is
  stored, while the next instance on the same association is.
- A large instance under the limit is stored byte-exactly, and the serve process's peak
  memory stays within a bound (it used to grow with every buffered copy).
- 8 concurrent DCMTK senders x 200 instances while 100 idle TCP connections are held open
  (re-opened as the server drops them): every instance acknowledged and read back byte-exact.
- 100 idle connections: a new sender gets in at once; they are closed after the ARTIM.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from conftest import Vault, dcmtk, wait_until
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomvault.dicom import parse_part10

MIB = 1024 * 1024


def make_instance(path: Path, pixel_bytes: int, study_uid: str, series_uid: str, seed: int = 0) -> str:
    """A Secondary Capture instance with ``pixel_bytes`` of (incompressible) pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "BOUNDS", "Front^Door", "OT", seed
    columns = 1024
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = max(1, pixel_bytes // columns), columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = os.urandom(ds.Rows * columns) if pixel_bytes > 64 * 1024 else bytes([seed % 256]) * (ds.Rows * columns)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def big_instance(path: Path, size: int) -> str:
    """An instance of about ``size`` bytes as frames of 16 MiB (Rows is 16 bits)."""
    ds_size = 16 * MIB
    uid = make_instance(path, ds_size, generate_uid(), generate_uid())
    ds = pydicom.dcmread(path)
    frames = max(1, size // ds_size)
    ds.NumberOfFrames = frames
    ds.PixelData = os.urandom(frames * ds_size)
    ds.save_as(path, enforce_file_format=True)
    return uid


def dataset_of(data: bytes) -> bytes:
    return data[parse_part10(data).dataset_offset:]


def storescu(vault: Vault, *files: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu, one association for all files; --no-halt: go on after a refusal."""
    return subprocess.run([dcmtk("storescu"), "-d", "--no-halt", "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout)


def retrieved(vault: Vault, uid: str, out: Path) -> dict[str, bytes]:
    """SOP Instance UID -> data set bytes of what `dicomvault get` writes back."""
    vault.cli("get", uid, "--out", str(out))
    found = {}
    for path in out.rglob("*.dcm"):
        data = path.read_bytes()
        found[parse_part10(data).attributes.sop_instance_uid] = dataset_of(data)
    return found


def proc_mib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


@contextmanager
def idle_connections(vault: Vault, count: int) -> Iterator[list[int]]:
    """Hold ``count`` TCP connections that never speak, re-opening each one the server drops
    (as a persistent attacker would), until the block ends. Yields [re-opened so far]."""
    socks: list[socket.socket] = [socket.create_connection(("127.0.0.1", vault.dicom_port), timeout=5)
                                  for _ in range(count)]
    reopened = [0]
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(0.2):
            readable, _, _ = select.select(socks, [], [], 0)
            for sock in readable:  # readable with nothing to say: the server closed it
                try:
                    closed = sock.recv(1) == b""
                except OSError:
                    closed = True
                if closed:
                    sock.close()
                    try:
                        socks[socks.index(sock)] = socket.create_connection(("127.0.0.1", vault.dicom_port), timeout=5)
                        reopened[0] += 1
                    except OSError:
                        pass

    keeper = threading.Thread(target=keep, daemon=True)
    keeper.start()
    try:
        yield reopened
    finally:
        stop.set()
        keeper.join(timeout=10)
        for sock in socks:
            sock.close()


def test_an_instance_over_the_maximum_is_refused_and_the_next_one_stored(vault: Vault, tmp_path: Path) -> None:
    vault.set_config("dicom", "max_instance_bytes", str(8 * MIB))
    vault.set_config("dicom", "spool_threshold_bytes", str(2 * MIB))
    vault.start()
    study = generate_uid()
    too_big, fits = tmp_path / "too_big.dcm", tmp_path / "fits.dcm"
    make_instance(too_big, 12 * MIB, study, generate_uid(), 1)
    fits_uid = make_instance(fits, 4 * MIB, study, generate_uid(), 2)
    sent = storescu(vault, too_big, fits)  # one association, the refused one first
    output = (sent.stdout + sent.stderr).lower()
    assert "0xa700" in output or "outofresources" in output.replace(" ", ""), output[-2000:]
    assert "instance larger than max_instance_bytes" in output, output[-2000:]
    assert "data set over max_instance_bytes" in vault.log()
    vault.wait_settled()
    status = vault.status()
    assert status["counts"]["instances"] == 1, "the refused instance left something behind"
    back = retrieved(vault, study, tmp_path / "out")
    assert back == {fits_uid: dataset_of(fits.read_bytes())}
    assert list((vault.root / "tmp" / "dimse").iterdir()) == [], "a spool file was left in the data directory"


def test_a_large_instance_is_stored_byte_exact_with_bounded_memory(vault: Vault, tmp_path: Path) -> None:
    size = 256 * MIB
    vault.set_config("dicom", "max_instance_bytes", str(512 * MIB))
    vault.start()
    path = tmp_path / "large.dcm"
    uid = big_instance(path, size)
    pid = vault.process.pid  # type: ignore[union-attr]
    baseline = proc_mib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    started = time.monotonic()
    sent = storescu(vault, path, timeout=240)
    assert sent.returncode == 0, sent.stderr
    peak = proc_mib(pid, "VmHWM")
    vault.wait_settled(timeout=60)
    print(f"\n{size // MIB} MiB instance: RSS {baseline} MiB before, peak {peak} MiB "
          f"(+{peak - baseline} MiB) in {time.monotonic() - started:.1f}s")
    # Receiving adds no copy (spooled, wrapped in Part-10 on disk); ingest still holds it whole
    # about three times: the mapped file's pages, the compressed payload, the sealed object
    # (its segments, then their join). Before the bounds: +4.8x at the peak.
    assert peak - baseline < 4 * size // MIB, f"peak memory grew by {peak - baseline} MiB for a {size // MIB} MiB instance"
    data = path.read_bytes()
    assert retrieved(vault, uid, tmp_path / "out") == {uid: dataset_of(data)}


def test_eight_senders_of_200_while_100_idle_connections_are_held(vault: Vault, tmp_path: Path) -> None:
    vault.start()
    study = generate_uid()
    sent: dict[str, bytes] = {}
    batches = []
    for sender in range(8):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        series = generate_uid()
        files = []
        for n in range(200):
            path = folder / f"{n:03d}.dcm"
            uid = make_instance(path, 2048, study, series, sender * 200 + n)
            sent[uid] = dataset_of(path.read_bytes())
            files.append(path)
        batches.append(files)
    started = time.monotonic()
    with idle_connections(vault, 100) as reopened:
        senders = [subprocess.Popen([dcmtk("storescu"), "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port),
                                     *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for files in batches]
        results = [(proc.wait(timeout=120), proc.stdout.read() if proc.stdout else "") for proc in senders]
    elapsed = time.monotonic() - started
    for code, output in results:
        assert code == 0, output[-2000:]
    assert reopened[0] > 0, "the server never dropped an idle connection: the pending cap was not exercised"
    vault.wait_settled(timeout=60)
    print(f"\n1600 instances from 8 senders in {elapsed:.1f}s, {reopened[0]} idle connections re-opened")
    back = retrieved(vault, study, tmp_path / "out")
    assert len(back) == 1600
    assert back == sent, "an acknowledged instance did not come back byte-exact"


def test_idle_connections_do_not_lock_a_sender_out_and_end_at_the_artim(vault: Vault, tmp_path: Path) -> None:
    vault.set_config("dicom", "artim_timeout", "2.0")
    vault.set_config("dicom", "max_associations", "4")
    vault.start()
    path = tmp_path / "one.dcm"
    uid = make_instance(path, 2048, generate_uid(), generate_uid(), 7)
    idle = [socket.create_connection(("127.0.0.1", vault.dicom_port), timeout=5) for _ in range(100)]
    try:
        started = time.monotonic()
        sent = storescu(vault, path, timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert time.monotonic() - started < 5, "the sender waited behind the idle connections"

        def all_closed() -> bool:
            readable, _, _ = select.select(idle, [], [], 0)
            return len(readable) == len(idle) and all(s.recv(1) == b"" for s in readable)

        wait_until(all_closed, timeout=15, what="the server to close every idle connection")
        assert "sent no association request" in vault.log()
    finally:
        for sock in idle:
            sock.close()
    vault.wait_settled()
    assert retrieved(vault, uid, tmp_path / "out") == {uid: dataset_of(path.read_bytes())}
