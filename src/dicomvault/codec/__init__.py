"""Byte-exact payload compression. The archive keeps exactly what it was given."""

from .zstd import CodecError, compress, decompress

__all__ = ["CodecError", "compress", "decompress"]
