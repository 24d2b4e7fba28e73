"""Coercing an instance's patient module to the catalog's current demographics (after HL7 ADT
updates, merges and changes of identifier), for what leaves the archive on request only:
``restore`` / ``export --coerce-demographics`` and C-MOVE / C-GET for a peer with
``coerce_demographics = true``. Stored objects never change; the default stays byte-exact.

Only the five patient attributes below are rewritten, and only when one differs; everything
else is re-encoded by pydicom in the same transfer syntax (pixel data untouched). ``None``
means "send the stored bytes as they are".
"""

from __future__ import annotations

import io
import zlib
from typing import Any

# catalog column -> DICOM keyword
PATIENT_MODULE = {"patient_name": "PatientName", "patient_id": "PatientID", "issuer": "IssuerOfPatientID",
                  "birth_date": "PatientBirthDate", "sex": "PatientSex"}
DEFLATED = "1.2.840.10008.1.2.1.99"


class CoercionError(Exception):
    """The instance cannot be re-encoded (it is then not sent coerced, and the caller says why)."""


def _apply(ds: Any, values: dict[str, str]) -> bool:
    changed = False
    for column, keyword in PATIENT_MODULE.items():
        wanted = values.get(column, "")
        current = str(ds.get(keyword, "") or "") if keyword in ds else None
        if current == wanted or (current is None and not wanted):
            continue
        setattr(ds, keyword, wanted)
        changed = True
    return changed


def coerce_file(data: bytes, values: dict[str, str]) -> bytes | None:
    """A Part-10 file with its patient module set to ``values``; None when nothing differs."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if not _apply(ds, values):
            return None
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on odd files
        raise CoercionError(f"cannot coerce the patient module: {type(exc).__name__}: {exc}") from exc
    return out.getvalue()


def coerce_dataset(data: bytes, transfer_syntax_uid: str, values: dict[str, str]) -> bytes | None:
    """A data set (no file meta, as DIMSE sends it) in ``transfer_syntax_uid``, with its patient
    module set to ``values``; None when nothing differs."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID

    syntax = UID(transfer_syntax_uid)
    try:
        raw = zlib.decompress(data, -zlib.MAX_WBITS) if syntax == DEFLATED else data
        implicit, little = (False, True) if syntax == DEFLATED else (syntax.is_implicit_VR, syntax.is_little_endian)
        ds = read_dataset(io.BytesIO(raw), implicit, little)
        if not _apply(ds, values):
            return None
        out = DicomBytesIO()
        out.is_implicit_VR, out.is_little_endian = implicit, little
        write_dataset(out, ds)
        encoded = out.getvalue()
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on odd data sets
        raise CoercionError(f"cannot coerce the patient module: {type(exc).__name__}: {exc}") from exc
    if syntax == DEFLATED:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        encoded = packer.compress(encoded) + packer.flush()
    return encoded
