"""A fast, read-only walk over a data set's element headers, for the ingest hot path.

pydicom builds a full Dataset (value conversion, charset handling, element objects) which
costs milliseconds per instance; ingest needs only ~20 text values from groups 0008-0020.
This walker reads raw element headers, skips values (and whole sequences) it does not need,
and, with ``to_end``, goes on over every remaining element header so the data set is proved
to be in the transfer syntax it declares: every explicit VR is a real VR, tags increase,
lengths stay inside the bytes and the last element ends exactly where the bytes do. Pixel
data is skipped by its length (or its fragments' lengths), never decoded.

Errors: ``TruncatedDataset`` (the bytes stop inside an element), ``MalformedDataset`` (the
bytes are not a data set in this transfer syntax: an implicit-VR data set on an explicit-VR
context, garbage between elements...), and plain ``HeaderWalkError`` for what the walk does
not handle (deflate, absurd nesting), where the caller falls back to pydicom.
"""

from __future__ import annotations

import struct

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_VRS = _LONG_VRS | _SHORT_VRS
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32


class HeaderWalkError(Exception):
    """The fast walk cannot vouch for this dataset: fall back to the full parser."""


class MalformedDataset(HeaderWalkError):
    """The bytes are not a data set in the transfer syntax they were declared in."""


class TruncatedDataset(MalformedDataset):
    """The bytes end inside an element: the instance was cut short (interrupted copy or send)."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


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
        if vr not in _SHORT_VRS:
            raise MalformedDataset(self._bad_vr((group << 16) | elem, vr))
        return (group << 16) | elem, vr, length, pos + 8

    def _bad_vr(self, tag: int, vr: bytes) -> str:
        if vr[:1].isupper() and vr[1:].isupper():
            return f"invalid VR {vr.decode('ascii')} at {_tag(tag)}"
        return f"no valid VR (implicit VR?) at {_tag(tag)}"

    def check_fits(self, tag: int, value: int, length: int) -> None:
        if value + length > self.size:
            if self.implicit and self.data[value - 4 : value - 2] in _VRS:
                raise MalformedDataset(f"explicit VR at {_tag(tag)}")
            raise TruncatedDataset(
                f"truncated: element {_tag(tag)} needs {length} bytes, only {self.size - value} remain"
            )

    def skip_element(self, tag: int, vr: bytes | None, length: int, value: int, depth: int) -> None:
        """Move past one element whose header was read (``pos`` is at its value)."""
        if length != UNDEFINED:
            self.check_fits(tag, value, length)
            self.pos = value + length
        elif vr is None or vr in (b"SQ", b"OB", b"OW"):  # sequence or encapsulated pixel data
            self.skip_undefined(depth + 1)
        elif vr == b"UN":  # a sequence of unknown VR: implicit VR little endian inside (PS3.5 6.2.2)
            implicit, self.implicit = self.implicit, True
            try:
                self.skip_undefined(depth + 1)
            finally:
                self.implicit = implicit
        else:
            raise MalformedDataset(f"undefined length on VR {vr.decode('ascii')} at {_tag(tag)}")

    def skip_undefined(self, depth: int) -> None:
        """Skip a sequence (or encapsulated pixel data) of undefined length, from its first item."""
        if depth > _MAX_DEPTH:
            raise HeaderWalkError("sequences nested too deeply")
        while True:
            tag, vr, length, value = self.header()
            self.pos = value
            if tag == SEQ_END:
                return
            if tag != ITEM:
                raise MalformedDataset(f"not a sequence item at {_tag(tag)}")
            if length != UNDEFINED:
                self.check_fits(tag, value, length)
                self.pos += length
                continue
            previous = -1
            while True:  # elements of an undefined-length item
                tag, vr, length, value = self.header()
                self.pos = value
                if tag == ITEM_END:
                    break
                if tag <= previous or tag >> 16 == 0xFFFE:
                    raise MalformedDataset(f"out of order (garbage?) in an item at {_tag(tag)}")
                previous = tag
                self.skip_element(tag, vr, length, value, depth)


def walker_for(data: bytes, offset: int, transfer_syntax: str) -> _Walker:
    if transfer_syntax == "1.2.840.10008.1.2":
        return _Walker(data, offset, implicit=True, little=True)
    if transfer_syntax == "1.2.840.10008.1.2.2":
        return _Walker(data, offset, implicit=False, little=False)
    if transfer_syntax in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"):
        raise HeaderWalkError("deflated dataset")
    # Every other syntax (explicit VR LE, every encapsulated one, private ones) is explicit VR LE.
    return _Walker(data, offset, implicit=False, little=True)


def walk_header(
    data: bytes, offset: int, transfer_syntax: str, wanted: set[int], to_end: bool = False
) -> dict[int, bytes]:
    """Raw values of the ``wanted`` top-level tags, stopping after the last one.

    With ``to_end`` the walk goes on over every remaining element (skipping values by their
    lengths, which costs microseconds) so a truncated or mis-encoded instance is caught.
    Archiving it would faithfully preserve an image nobody can read, in a file whose meta
    declares a syntax it is not in.
    """
    walker = walker_for(data, offset, transfer_syntax)
    found: dict[int, bytes] = {}
    last = max(wanted)
    previous = -1
    while walker.pos < walker.size:
        tag, vr, length, value = walker.header()
        if tag > last:
            break
        if tag <= previous or tag >> 16 == 0xFFFE:
            _check_order(tag, previous)
        previous = tag
        walker.pos = value
        if length == UNDEFINED:
            walker.skip_element(tag, vr, length, value, 0)
            continue
        if value + length > walker.size:
            walker.check_fits(tag, value, length)
        if tag in wanted:
            found[tag] = data[value : value + length]
        walker.pos = value + length
    if to_end:
        _walk_rest(walker, previous)
    return found


def _check_order(tag: int, previous: int) -> None:
    if tag <= previous or tag >> 16 == 0xFFFE:
        what = "item or delimiter outside a sequence" if tag >> 16 == 0xFFFE else "out of order (garbage?)"
        raise MalformedDataset(f"{what} at {_tag(tag)} after {_tag(previous)}")


def _walk_rest(walker: _Walker, previous: int) -> None:
    """Skip every remaining top-level element, proving the dataset ends where its last element does.

    Inlined loop for explicit VR with a short VR (most elements of nearly every dataset): a
    method call per element would cost as much as the whole header walk.
    """
    data, size, pos = walker.data, walker.size, walker.pos
    explicit, short_vrs = walker._explicit, _SHORT_VRS
    implicit = walker.implicit
    while pos < size:
        if pos + 8 > size:
            raise TruncatedDataset("truncated: the bytes end inside an element header")
        if not implicit:
            group, elem, vr, length = explicit(data, pos)
            tag = (group << 16) | elem
            if tag > previous and vr in short_vrs:  # an item tag here is caught by the next element
                previous = tag
                pos += 8 + length
                continue
        # the general path: implicit VR, long VRs, items, sequences and errors
        walker.pos = pos
        tag, vr, length, value = walker.header()
        _check_order(tag, previous)
        previous = tag
        walker.pos = value
        walker.skip_element(tag, vr, length, value, 0)
        pos = walker.pos
    if pos > size:
        walker.pos = pos - 8 - length
        walker.check_fits(tag, walker.pos + 8, length)
    walker.pos = pos
