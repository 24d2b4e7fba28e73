"""Site and recovery key rotation (``keys rotate``)."""
