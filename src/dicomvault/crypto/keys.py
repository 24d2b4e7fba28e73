"""Key files and per-study data keys.

Three kinds of key exist:

* the **site key** (32 random bytes, on the archive host, mode 0600): HKDF derives from it a
  key-encryption key that wraps every study data key, and a MAC key that turns content
  hashes into object ids, so object names never reveal a plaintext hash;
* the **recovery key pair** (X25519): the public half lives beside the site key and every
  study data key is also wrapped for it; the private half is written once, to its own file,
  and belongs offline. With it alone a DR site can open any copy of any object;
* **study data keys** (AES-256, one per study): they encrypt the objects, so destroying a
  study's key material is enough to make every copy of that study unreadable.

Wrapping for the recovery key is ECIES: an ephemeral X25519 key agreement, HKDF-SHA256,
then AES-256-GCM over the data key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SITE_KEY_HEADER = "dicomvault-site-key-v1"
RECOVERY_KEY_PEM_NOTE = (
    "# dicomvault RECOVERY PRIVATE KEY.\n"
    "# Anyone holding this file can decrypt every copy of this archive, on every site.\n"
    "# Move it OFFLINE (a safe, a sealed envelope, an HSM) and delete it from this machine.\n"
    "# Without it, a copy whose site key is lost cannot be read by anyone.\n"
)


class KeyError_(Exception):
    """A key file is missing, malformed, or does not open the data it should."""


def _hkdf(key: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


@dataclass(frozen=True)
class StudyKey:
    """A study's data key with its two wrapped forms, as stored in every object header."""

    key_id: str
    data_key: bytes
    wrapped_by_site: bytes
    wrapped_for_recovery: bytes


class RecoveryKey:
    """The offline private half: unwraps any data key without the site key."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private = private_key

    @classmethod
    def load(cls, path: Path) -> "RecoveryKey":
        try:
            text = path.read_bytes()
            start = text.index(b"-----BEGIN")
            key = serialization.load_pem_private_key(text[start:], password=None)
        except (OSError, ValueError) as exc:
            raise KeyError_(f"cannot read recovery key {path}: {exc}") from exc
        if not isinstance(key, X25519PrivateKey):
            raise KeyError_(f"{path} is not a dicomvault (X25519) recovery key")
        return cls(key)

    def public_key(self) -> X25519PublicKey:
        return self._private.public_key()

    def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        if len(wrapped) < 32 + 12 + 16:
            raise KeyError_("wrapped recovery key blob is truncated")
        ephemeral = X25519PublicKey.from_public_bytes(wrapped[:32])
        shared = self._private.exchange(ephemeral)
        wrap_key = _hkdf(shared, b"dicomvault recovery wrap v1", salt=wrapped[:32])
        try:
            return AESGCM(wrap_key).decrypt(wrapped[32:44], wrapped[44:], key_id.encode())
        except InvalidTag as exc:
            raise KeyError_("recovery key does not open this data key (wrong key or altered header)") from exc


def wrap_for_recovery(public_key: X25519PublicKey, data_key: bytes, key_id: str) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    eph_pub = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    wrap_key = _hkdf(ephemeral.exchange(public_key), b"dicomvault recovery wrap v1", salt=eph_pub)
    nonce = os.urandom(12)
    return eph_pub + nonce + AESGCM(wrap_key).encrypt(nonce, data_key, key_id.encode())


class Keyring:
    """The keys an archive host holds: the site key and the recovery PUBLIC key."""

    def __init__(self, site_key: bytes, recovery_public: X25519PublicKey) -> None:
        if len(site_key) != 32:
            raise KeyError_("site key must be 32 bytes")
        self._kek = AESGCM(_hkdf(site_key, b"dicomvault key-encryption key v1"))
        self._id_key = _hkdf(site_key, b"dicomvault object id key v1")
        self.recovery_public = recovery_public
        self._site_key = site_key
        self.fingerprint = hashlib.sha256(_hkdf(site_key, b"dicomvault fingerprint v1")).hexdigest()[:16]

    @classmethod
    def load(cls, site_key_file: Path, recovery_public_file: Path) -> "Keyring":
        try:
            lines = [ln.strip() for ln in site_key_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        except OSError as exc:
            raise KeyError_(f"cannot read site key {site_key_file}: {exc}; run `dicomvault init`") from exc
        if len(lines) != 2 or lines[0] != SITE_KEY_HEADER:
            raise KeyError_(f"{site_key_file} is not a dicomvault site key file")
        try:
            site_key = base64.b64decode(lines[1], validate=True)
        except ValueError as exc:
            raise KeyError_(f"{site_key_file}: site key is not valid base64") from exc
        try:
            pub = serialization.load_pem_public_key(recovery_public_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise KeyError_(f"cannot read recovery public key {recovery_public_file}: {exc}") from exc
        if not isinstance(pub, X25519PublicKey):
            raise KeyError_(f"{recovery_public_file} is not an X25519 public key")
        return cls(site_key, pub)

    def site_key_for_snapshot(self) -> bytes:
        """The raw site key, only to be sealed inside catalog snapshots (jobs/rebuild/snapshot.py).

        A snapshot is encrypted for the recovery key too, so whoever holds the offline
        recovery key can give a rebuilt archive this very site key: object names (keyed
        MACs) and every object header stay valid. That holder can already read every copy,
        so the escrow grants nothing new.
        """
        return self._site_key

    def recovery_public_pem(self) -> bytes:
        return self.recovery_public.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)

    def object_id(self, content_sha256: bytes) -> str:
        """Keyed name of an object: equal content gives equal ids, but the id leaks no hash."""
        return hmac.new(self._id_key, content_sha256, hashlib.sha256).hexdigest()

    def new_study_key(self) -> StudyKey:
        key_id = secrets.token_hex(16)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        wrapped = nonce + self._kek.encrypt(nonce, data_key, key_id.encode())
        return StudyKey(key_id, data_key, wrapped, wrap_for_recovery(self.recovery_public, data_key, key_id))

    def unwrap(self, key_id: str, wrapped_by_site: bytes) -> bytes:
        try:
            return self._kek.decrypt(wrapped_by_site[:12], wrapped_by_site[12:], key_id.encode())
        except InvalidTag as exc:
            raise KeyError_("site key does not open this data key (wrong site key or altered header)") from exc

    def study_key_from_wrapped(self, key_id: str, wrapped_by_site: bytes, wrapped_for_recovery: bytes) -> StudyKey:
        return StudyKey(key_id, self.unwrap(key_id, wrapped_by_site), wrapped_by_site, wrapped_for_recovery)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keys(site_key_file: Path, recovery_public_file: Path, recovery_private_file: Path) -> None:
    """Create a fresh site key and recovery key pair; refuses to overwrite existing keys."""
    for path in (site_key_file, recovery_public_file, recovery_private_file):
        if path.exists():
            raise KeyError_(f"{path} already exists; refusing to overwrite a key")
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(recovery_private_file, RECOVERY_KEY_PEM_NOTE.encode() + pem)
    write_host_keys(site_key_file, recovery_public_file, secrets.token_bytes(32), private.public_key())


def write_host_keys(site_key_file: Path, recovery_public_file: Path, site_key: bytes,
                    recovery_public: X25519PublicKey) -> None:
    """Write the two keys an archive host holds (``init``, or ``rebuild-index`` restoring them)."""
    _write_private(
        site_key_file,
        f"# dicomvault site key. Keep on this host only, mode 0600.\n{SITE_KEY_HEADER}\n"
        f"{base64.b64encode(site_key).decode()}\n".encode(),
    )
    public_pem = recovery_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_private(recovery_public_file, public_pem)
    os.chmod(recovery_public_file, 0o644)
