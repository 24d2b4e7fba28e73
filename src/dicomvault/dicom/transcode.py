"""Lossless re-encoding between the uncompressed transfer syntaxes, for peers that will not
accept the syntax an instance was stored in.

Retrieval sends stored bytes unchanged whenever the peer accepts the stored syntax; this is
the fallback. Only the encoding changes (VR explicit/implicit, byte order, deflate): every
value, pixel data included, is the same, so nothing is lost. Compressed pixel data would
need a codec round trip and is not converted here: the sub-operation fails with a reason.
"""

from __future__ import annotations

import io
import zlib

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE)


class TranscodeError(Exception):
    """The data set cannot be re-encoded losslessly in the wanted transfer syntax."""


def can_transcode(source: str, target: str) -> bool:
    return source == target or (source in UNCOMPRESSED and target in UNCOMPRESSED)


def transcode(dataset: bytes, source: str, target: str) -> bytes:
    """``dataset`` (no file meta) re-encoded from ``source`` to ``target`` syntax."""
    if source == target:
        return dataset
    if not can_transcode(source, target):
        raise TranscodeError(f"cannot convert {source} to {target} without a pixel codec")
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    raw = zlib.decompress(dataset, -zlib.MAX_WBITS) if source == DEFLATED_EXPLICIT_VR_LE else dataset
    try:
        ds = read_dataset(io.BytesIO(raw), is_implicit_VR=source == IMPLICIT_VR_LE,
                          is_little_endian=source != EXPLICIT_VR_BE)
        out = DicomBytesIO()
        out.is_little_endian = target != EXPLICIT_VR_BE
        out.is_implicit_VR = target == IMPLICIT_VR_LE
        write_dataset(out, ds)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on odd data
        raise TranscodeError(f"re-encoding {source} as {target} failed: {exc}") from exc
    encoded = out.getvalue()
    if target == DEFLATED_EXPLICIT_VR_LE:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        encoded = compressor.compress(encoded) + compressor.flush()
    return encoded


def pick_syntax(stored: str, accepted: list[str]) -> str:
    """The stored syntax when the receiver accepts it (bytes unchanged), else an uncompressed
    one reachable without loss; ``TranscodeError`` says why there is none."""
    if stored in accepted:
        return stored
    for syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE, *accepted):
        if syntax in accepted and stored in UNCOMPRESSED and syntax in UNCOMPRESSED:
            return syntax
    raise TranscodeError(f"receiver accepts only {', '.join(accepted) or 'no syntax'} for this SOP class; the "
                         f"instance is stored as {stored} and is never converted with loss")


def proposals(pairs: "list[tuple[str, str]]") -> "list[tuple[str, str]]":
    """The (SOP class, transfer syntax) pairs to propose for sending instances stored as
    ``pairs``: each stored pair first, then uncompressed fallbacks for the uncompressed ones,
    so a receiver refusing, say, Big Endian still gets the instance losslessly."""
    wanted = list(dict.fromkeys(pairs))
    for sop_class, syntax in list(wanted):
        if syntax in UNCOMPRESSED:
            wanted += [(sop_class, EXPLICIT_VR_LE), (sop_class, IMPLICIT_VR_LE)]
    return list(dict.fromkeys(wanted))
