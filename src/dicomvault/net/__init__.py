"""A lean DICOM Upper Layer acceptor for the ingest hot path (see ``acceptor.py``)."""
