"""A fast, read-only walk over the first elements of a dataset, for the ingest hot path.

pydicom builds a full Dataset (value conversion, charset handling, element objects) which
costs milliseconds per instance; ingest needs only ~20 text values from groups 0008-0020.
This walker reads raw element headers, skips values (and whole sequences) it does not need,
and stops at the first tag past the last one wanted. It handles the three uncompressed
encodings every non-deflated transfer syntax uses for its dataset; anything it is unsure of
raises ``HeaderWalkError`` and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class HeaderWalkError(Exception):
    """The fast walk cannot vouch for this dataset: fall back to the full parser."""


class TruncatedDataset(HeaderWalkError):
    """The bytes end inside an element: the instance was cut short (interrupted copy or send)."""


class _Walker:
    def __init__(self, data: bytes, offset: int, implicit: bool, little: bool) -> None:
        self.data = data
        self.pos = offset
        self.implicit = implicit
        self.endian = "<" if little else ">"

    def header(self) -> tuple[int, bytes | None, int, int]:
        """(tag, vr or None, value length, value offset) of the element at ``pos``."""
        data, pos = self.data, self.pos
        if pos + 8 > len(data):
            raise TruncatedDataset("truncated: the bytes end inside an element header")
        group, elem = struct.unpack_from(self.endian + "HH", data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE or self.implicit:
            (length,) = struct.unpack_from(self.endian + "I", data, pos + 4)
            return tag, None, length, pos + 8
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise TruncatedDataset("truncated: the bytes end inside an element header")
            (length,) = struct.unpack_from(self.endian + "I", data, pos + 8)
            return tag, vr, length, pos + 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise HeaderWalkError(f"invalid VR {vr!r}")
        (length,) = struct.unpack_from(self.endian + "H", data, pos + 6)
        return tag, vr, length, pos + 8

    def skip_undefined(self, depth: int = 0) -> None:
        """Skip a sequence (or item) of undefined length, starting at its first item."""
        if depth > 32:
            raise HeaderWalkError("sequences nested too deeply")
        while True:
            tag, vr, length, value = self.header()
            self.pos = value
            if tag == SEQ_END:
                return
            if tag != ITEM:
                raise HeaderWalkError("expected a sequence item")
            if length != UNDEFINED:
                self.pos += length
                continue
            while True:  # elements of an undefined-length item
                tag, vr, length, value = self.header()
                self.pos = value
                if tag == ITEM_END:
                    break
                if length == UNDEFINED:
                    self.skip_undefined(depth + 1)
                else:
                    self.pos += length


def walk_header(
    data: bytes, offset: int, transfer_syntax: str, wanted: set[int], to_end: bool = False
) -> dict[int, bytes]:
    """Raw values of the ``wanted`` top-level tags, stopping after the last one.

    With ``to_end`` the walk goes on over every remaining element (skipping values by their
    lengths, which costs microseconds) so a truncated instance is caught: its last element
    runs past the end of the bytes (``TruncatedDataset``). Archiving a truncated instance
    would faithfully preserve an image nobody can read.
    """
    if transfer_syntax == "1.2.840.10008.1.2":
        walker = _Walker(data, offset, implicit=True, little=True)
    elif transfer_syntax == "1.2.840.10008.1.2.2":
        walker = _Walker(data, offset, implicit=False, little=False)
    elif transfer_syntax == "1.2.840.10008.1.2.1.99":
        raise HeaderWalkError("deflated dataset")
    else:
        walker = _Walker(data, offset, implicit=False, little=True)
    found: dict[int, bytes] = {}
    last = max(wanted)
    while walker.pos < len(data):
        tag, _vr, length, value = walker.header()
        if tag > last and not to_end:
            break
        walker.pos = value
        if length == UNDEFINED:
            walker.skip_undefined()
            continue
        if value + length > len(data):
            raise TruncatedDataset(
                f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) needs {length} bytes,"
                f" only {len(data) - value} remain"
            )
        if tag in wanted:
            found[tag] = data[value : value + length]
        walker.pos = value + length
    return found
