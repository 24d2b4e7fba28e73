"""Benchmark data for ``benchmarks/ingest``: copies of pydicom test files with fresh UIDs.

Each set is written as ``DIR/<set>/part<k>/`` (k = 0..3, files dealt round-robin) so that one
``storescu +sd +r DIR/<set>`` sends all files over one association and four ``storescu +sd
DIR/<set>/part<k>`` processes send a quarter each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import generate_uid

CT_SOURCE = "693_UNCR.dcm"
SMALL_SOURCE = "CT_small.dcm"
UNCOMPRESSED = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
}
PARTS = 4


@dataclass
class DataSet:
    name: str
    source: Path
    root: Path
    count: int
    total_bytes: int
    studies: int
    series: int
    parts: list[Path] = field(default_factory=list)


def _is_big_ct(path: Path) -> bool:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not every test file is readable
        return False
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    return (
        ds.get("Modality") == "CT"
        and ds.get("Rows") == 512
        and ds.get("Columns") == 512
        and ds.get("BitsAllocated") == 16
        and ds.get("SamplesPerPixel", 1) == 1
        and ts in UNCOMPRESSED
        and int(ds.get("NumberOfFrames", 1) or 1) == 1
    )


def ct_source() -> Path:
    """693_UNCR.dcm if it is an uncompressed 512x512 16-bit CT, else another test file that is."""
    preferred = Path(get_testdata_file(CT_SOURCE))
    if _is_big_ct(preferred):
        return preferred
    for candidate in sorted(get_testdata_files("*.dcm")):
        if _is_big_ct(Path(candidate)):
            print(f"note: {CT_SOURCE} is not an uncompressed 512x512 16-bit CT; using {candidate}")
            return Path(candidate)
    raise SystemExit("no uncompressed 512x512 16-bit CT among the pydicom test files (is pydicom-data installed?)")


def small_source() -> Path:
    return Path(get_testdata_file(SMALL_SOURCE))


def make_set(name: str, source: Path, root: Path, count: int, studies: int, series_per_study: int) -> DataSet:
    """Write ``count`` copies of ``source`` with fresh Study/Series/SOP Instance UIDs."""
    template = pydicom.dcmread(source)
    template.PixelData  # noqa: B018 - load the pixels once, not per copy
    out = root / name
    parts = [out / f"part{k}" for k in range(PARTS)]
    for part in parts:
        part.mkdir(parents=True, exist_ok=True)
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [[generate_uid() for _ in range(series_per_study)] for _ in range(studies)]
    total = 0
    for i in range(count):
        study = i % studies
        series = (i // studies) % series_per_study
        sop_uid = generate_uid()
        template.StudyInstanceUID = study_uids[study]
        template.SeriesInstanceUID = series_uids[study][series]
        template.SOPInstanceUID = sop_uid
        template.file_meta.MediaStorageSOPInstanceUID = sop_uid
        template.PatientID = f"BENCH-{name.upper()}-{study + 1}"
        template.StudyID = str(study + 1)
        template.SeriesNumber = series + 1
        template.InstanceNumber = i // (studies * series_per_study) + 1
        path = parts[i % PARTS] / f"{i:06d}.dcm"
        template.save_as(path, enforce_file_format=True)
        total += os.path.getsize(path)
    return DataSet(name, source, out, count, total, studies, studies * series_per_study, parts)


def corpus_run_arguments(doc: str, prefix: str, repeat: int = 3) -> tuple[argparse.Namespace, Path]:
    """The options every corpus benchmark takes (--instances, --repeat, --workdir) and its work
    folder: ``--workdir`` (kept afterwards) or a fresh temporary one named ``prefix...``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and servers' files here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}")
    return args, work
