"""Byte-exact payload compression. The archive keeps exactly what it was given."""

from .zstd import CodecError, compress, decompress, worth_compressing

__all__ = ["CodecError", "compress", "decompress", "worth_compressing"]
