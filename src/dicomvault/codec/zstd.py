"""Lossless zstd compression, skipped when it does not pay (already-compressed pixel data).

Objects record which codec they used, so a reader never guesses and new codecs can be
added without touching old objects.
"""

from __future__ import annotations

import threading

import zstandard

_local = threading.local()
MIN_SAVING = 0.03  # keep compressed output only when it saves at least 3%


class CodecError(Exception):
    """A payload could not be decoded with the codec its object names."""


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


# Transfer syntaxes whose pixel data is raw (or merely deflated): worth compressing.
# Everything else is encapsulated JPEG/JPEG 2000/JPEG-LS/RLE/MPEG, which zstd cannot shrink.
_RAW_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
})


def worth_compressing(transfer_syntax_uid: str) -> bool:
    return transfer_syntax_uid in _RAW_SYNTAXES


def compress(data: bytes, level: int = 1) -> tuple[str, bytes]:
    """Return (codec name, encoded bytes)."""
    packed = _compressor(level).compress(data)
    if len(packed) <= len(data) * (1 - MIN_SAVING):
        return "zstd", packed
    return "none", data


def decompress(codec: str, data: bytes, expected_size: int) -> bytes:
    if codec == "none":
        return data
    if codec == "zstd":
        try:
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=expected_size)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd payload is corrupt: {exc}") from exc
    raise CodecError(f"unknown codec {codec!r}; this object needs a newer dicomvault")
