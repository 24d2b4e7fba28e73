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
        self.size = len(data)
        self.pos = offset
        self.implicit = implicit
        endian = "<" if little else ">"
        # Precompiled layouts: tag + 4-byte length (implicit VR, items) and tag + VR + 2-byte
        # length (explicit VR); the walk runs over every element, so this is the hot loop.
        self._implicit = struct.Struct(endian + "HHI").unpack_from
        self._explicit = struct.Struct(endian + "HH2sH").unpack_from
        self._long = struct.Struct(endian + "I").unpack_from

    def header(self) -> tuple[int, bytes | None, int, int]:
        """(tag, vr or None, value length, value offset) of the element at ``pos``."""
        data, pos = self.data, self.pos
        if pos + 8 > self.size:
            raise TruncatedDataset("truncated: the bytes end inside an element header")
        if self.implicit:
            group, elem, length = self._implicit(data, pos)
            return (group << 16) | elem, None, length, pos + 8
        group, elem, vr, length = self._explicit(data, pos)
        if group == 0xFFFE:
            group, elem, length = self._implicit(data, pos)
            return (group << 16) | elem, None, length, pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > self.size:
                raise TruncatedDataset("truncated: the bytes end inside an element header")
            return (group << 16) | elem, vr, self._long(data, pos + 8)[0], pos + 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise HeaderWalkError(f"invalid VR {vr!r}")
        return (group << 16) | elem, vr, length, pos + 8

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
    while walker.pos < walker.size:
        tag, _vr, length, value = walker.header()
        if tag > last:
            break
        walker.pos = value
        if length == UNDEFINED:
            walker.skip_undefined()
            continue
        _check_fits(walker, tag, value, length)
        if tag in wanted:
            found[tag] = data[value : value + length]
        walker.pos = value + length
    if to_end:
        _walk_rest(walker)
    return found


def _check_fits(walker: _Walker, tag: int, value: int, length: int) -> None:
    if value + length > walker.size:
        raise TruncatedDataset(
            f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) needs {length} bytes,"
            f" only {walker.size - value} remain"
        )


def _walk_rest(walker: _Walker) -> None:
    """Skip every remaining top-level element, proving the dataset ends where its last element does.

    Inlined loop for explicit VR (nearly every dataset): a method call per element would cost
    as much as the whole header walk.
    """
    if walker.implicit:
        while walker.pos < walker.size:
            tag, _vr, length, value = walker.header()
            walker.pos = value
            if length == UNDEFINED:
                walker.skip_undefined()
                continue
            _check_fits(walker, tag, value, length)
            walker.pos = value + length
        return
    data, size, pos = walker.data, walker.size, walker.pos
    explicit, long_length, long_vrs = walker._explicit, walker._long, _LONG_VRS
    while pos < size:
        if pos + 8 > size:
            raise TruncatedDataset("truncated: the bytes end inside an element header")
        group, elem, vr, length = explicit(data, pos)
        if group == 0xFFFE or vr in long_vrs or not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            walker.pos = pos  # the general path handles items, long VRs and errors
            tag, _vr, length, value = walker.header()
            walker.pos = value
            if length == UNDEFINED:
                walker.skip_undefined()
            else:
                _check_fits(walker, tag, value, length)
                walker.pos = value + length
            pos = walker.pos
            continue
        pos += 8 + length
    if pos > size:
        walker.pos = pos - 8 - length
        _check_fits(walker, (group << 16) | elem, walker.pos + 8, length)
    walker.pos = pos
