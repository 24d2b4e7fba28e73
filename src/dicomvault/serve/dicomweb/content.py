"""What WADO-RS serves from inside one instance: DICOM JSON metadata, bulk data and frames.

Everything here works on one decrypted, verified Part-10 file at a time (pydicom), never on
the catalog. Bulk data (binary values above a threshold, e.g. Pixel Data) is left out of the
metadata and named by a BulkDataURI ``<instance URL>/bulkdata/<path>``, where the path is the
element's tag, and for elements inside sequences ``<tag>/<item index>/<tag>...`` (item index
from 0).

Frames: native (uncompressed) pixel data is cut into frames of Rows x Columns x Samples x
BitsAllocated bits and returned little endian (application/octet-stream); encapsulated pixel
data returns each frame's fragments joined, in the media type of its transfer syntax (e.g.
image/jpeg). Nothing is decompressed.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from dicomvault.serve.dicomweb.common import DicomwebError
from dicomvault.serve.numbers import whole_number

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

BULK_THRESHOLD = 1024  # base64 characters; pydicom inlines values up to 3/4 of this (768 bytes)
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"}
PIXEL_DATA = 0x7FE00010
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = {IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE}
AVAILABLE_TRANSFER_SYNTAX = "00083002"

# Media type of an encapsulated frame, by transfer syntax (PS3.18 Table 8.7.3-5 and -6).
_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2", "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4", "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4", "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}


def read_dataset(data: bytes) -> "Dataset":
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - archived bytes pydicom cannot parse: say so
        raise DicomwebError(500, f"the stored instance cannot be parsed for this view: {exc}") from exc


def _binary(elem: "DataElement") -> bool:
    return str(elem.VR) in _BINARY_VRS


def _walk(ds: "Dataset", prefix: str = "") -> Iterator[tuple[str, "DataElement"]]:
    """(path, element) of every element, depth first; paths as in BulkDataURIs."""
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        yield path, elem
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value or []):
                yield from _walk(item, f"{path}/{index}/")


def bulk_elements(ds: "Dataset") -> list[tuple[str, "DataElement"]]:
    """Binary elements whose value the metadata replaces with a BulkDataURI, in file order."""
    threshold = (BULK_THRESHOLD // 4) * 3
    return [(path, elem) for path, elem in _walk(ds)
            if _binary(elem) and not elem.is_empty and len(elem.value) > threshold]


def metadata_json(ds: "Dataset", instance_url: str, transfer_syntax: str) -> dict[str, Any]:
    """The instance as a DICOM JSON object (PS3.18 F.2), bulk data by reference."""
    paths = {id(elem): path for path, elem in _walk(ds) if _binary(elem)}

    def bulk_uri(elem: "DataElement") -> str:
        return f"{instance_url}/bulkdata/{paths.get(id(elem), f'{elem.tag:08X}')}"

    body = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk_uri,
                           suppress_invalid_tags=True)
    body[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [transfer_syntax]}
    return dict(sorted(body.items()))


def find_element(ds: "Dataset", path: str) -> "DataElement":
    """The element a bulk data path names (404 if there is none, 400 if the path is malformed)."""
    steps = path.strip("/").split("/")
    if len(steps) % 2 != 1:
        raise DicomwebError(400, f"bulk data path {path!r} must be TAG or TAG/ITEM/TAG...")
    current: Any = ds
    elem = None
    for i in range(0, len(steps), 2):
        if not _HEX_TAG.fullmatch(steps[i]):
            raise DicomwebError(400, f"bulk data path {path!r}: {steps[i]!r} is not an 8-digit hex tag")
        tag = int(steps[i], 16)
        if tag not in current:
            raise DicomwebError(404, f"the instance has no element {steps[i].upper()} at bulk data path {path!r}")
        elem = current[tag]
        if i + 1 < len(steps):
            item = whole_number(steps[i + 1])
            if elem.VR != "SQ" or item is None or item >= len(elem.value or []):
                raise DicomwebError(404, f"bulk data path {path!r}: no item {steps[i + 1][:20]!r} in {steps[i].upper()}")
            current = elem.value[item]
    assert elem is not None
    if not _binary(elem):
        raise DicomwebError(404, f"element {steps[-1].upper()} is not bulk data (VR {elem.VR})")
    return elem


def frame_media_type(transfer_syntax: str) -> str:
    """What one frame is sent as: raw little-endian pixels, or the codec's own stream."""
    if transfer_syntax in NATIVE_SYNTAXES:
        return "application/octet-stream"
    return _FRAME_MEDIA.get(transfer_syntax, "application/octet-stream")


def is_native(transfer_syntax: str) -> bool:
    return transfer_syntax in NATIVE_SYNTAXES


def number_of_frames(ds: "Dataset") -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frames(ds: "Dataset", transfer_syntax: str, numbers: list[int]) -> list[bytes]:
    """The requested frames (1-based), in the order asked."""
    if PIXEL_DATA not in ds:
        raise DicomwebError(404, "the instance has no Pixel Data (7FE0,0010), so it has no frames")
    total = number_of_frames(ds)
    for number in numbers:
        if not 1 <= number <= total:
            raise DicomwebError(404, f"frame {number} does not exist: the instance has {total} frame(s)")
    if is_native(transfer_syntax):
        return _native_frames(ds, transfer_syntax, numbers, total)
    from pydicom.encaps import generate_frames

    try:
        wanted = list(islice(generate_frames(ds.PixelData, number_of_frames=total), max(numbers)))
    except Exception as exc:  # noqa: BLE001 - malformed encapsulation in an archived file
        raise DicomwebError(500, f"the stored encapsulated Pixel Data cannot be split into frames: {exc}") from exc
    if len(wanted) < max(numbers):
        raise DicomwebError(500, f"the stored Pixel Data holds {len(wanted)} frame(s), fewer than Number of Frames")
    return [wanted[n - 1] for n in numbers]


def _native_frames(ds: "Dataset", transfer_syntax: str, numbers: list[int], total: int) -> list[bytes]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomwebError(500, f"the instance lacks the image attributes needed to cut frames: {exc}") from exc
    frame_bits = rows * columns * samples * bits
    if transfer_syntax != EXPLICIT_BE and frame_bits % 8 == 0:
        size = frame_bits // 8
        pixels = ds.PixelData
        if len(pixels) < size * total:
            raise DicomwebError(500, f"the stored Pixel Data is {len(pixels)} bytes, short of {total} frame(s) "
                                     f"of {size} bytes")
        return [bytes(pixels[(n - 1) * size : n * size]) for n in numbers]
    # Big endian or bit-packed (BitsAllocated 1): let pydicom unpack, then re-encode each frame
    # as little endian / packed bits.
    import numpy as np

    try:
        array = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise DicomwebError(500, f"the stored native Pixel Data cannot be read: {exc}") from exc
    if total == 1:
        array = array[np.newaxis, ...]
    out = []
    for number in numbers:
        frame = array[number - 1]
        if bits == 1:
            out.append(np.packbits(frame.astype(np.uint8).ravel(), bitorder="little").tobytes())
        else:
            out.append(frame.astype(frame.dtype.newbyteorder("<")).tobytes())
    return out


def pixel_bulk(ds: "Dataset", transfer_syntax: str) -> list[bytes]:
    """Top-level Pixel Data as bulk data parts.

    Native: the whole value in one part (little endian: as stored, or converted from big
    endian frame by frame); encapsulated: one part per frame.
    """
    total = number_of_frames(ds)
    if is_native(transfer_syntax):
        if transfer_syntax != EXPLICIT_BE:
            return [bytes(ds.PixelData)]
        return [b"".join(frames(ds, transfer_syntax, list(range(1, total + 1))))]
    return frames(ds, transfer_syntax, list(range(1, total + 1)))


# Lossless, cheap re-encodings offered when a client asks for another transfer syntax:
# between the uncompressed little-endian syntaxes only (pydicom re-writes the dataset).
TRANSCODE_FROM = {IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE}
TRANSCODE_TO = {IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE}


def can_transcode(source: str, target: str) -> bool:
    return source == target or (source in TRANSCODE_FROM and target in TRANSCODE_TO)


def transcode(data: bytes, target: str) -> bytes:
    """The instance re-written in ``target`` (an uncompressed little-endian syntax), as Part-10:
    the data set through ``dicom/transcode.py`` (the same re-encoding C-GET/C-MOVE use),
    wrapped in a fresh file meta."""
    from dicomvault.dicom import build_part10, parse_part10
    from dicomvault.dicom.transcode import transcode as transcode_dataset

    parsed = parse_part10(data)
    attributes = parsed.attributes
    dataset = transcode_dataset(data[parsed.dataset_offset:], attributes.transfer_syntax_uid, target)
    return build_part10(attributes.sop_class_uid, attributes.sop_instance_uid, target, dataset)
