"""DICOM parsing helpers: Part-10 framing and the header attributes the catalog indexes."""

from .part10 import DatasetMismatch, DicomFormatError, ParsedInstance, build_part10, parse_part10, split_part10

__all__ = ["DatasetMismatch", "DicomFormatError", "ParsedInstance", "build_part10", "parse_part10", "split_part10"]
