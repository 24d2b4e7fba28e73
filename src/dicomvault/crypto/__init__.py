"""Envelope encryption, key files, the offline recovery key and keyed object ids."""

from .envelope import DecryptionError, EncryptedObject, ObjectHeader, open_object, seal_object
from .keys import KeyError_, Keyring, RecoveryKey, StudyKey, generate_keys

__all__ = [
    "DecryptionError",
    "EncryptedObject",
    "KeyError_",
    "Keyring",
    "ObjectHeader",
    "RecoveryKey",
    "StudyKey",
    "generate_keys",
    "open_object",
    "seal_object",
]
