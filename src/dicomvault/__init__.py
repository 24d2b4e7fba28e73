"""dicomvault: a disaster-recovery archive for medical images."""

__version__ = "0.1.0"
