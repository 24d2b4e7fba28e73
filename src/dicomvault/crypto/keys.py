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
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SITE_KEY_HEADER = "dicomvault-site-key-v1"
SITE_KEYS_HEADER = "dicomvault-site-keys-v2"  # after `keys rotate`: several generations
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
    """A study's data key with its two wrapped forms (its key record, ``KeyRecord``)."""

    key_id: str
    data_key: bytes
    wrapped_by_site: bytes
    wrapped_for_recovery: bytes
    kek_id: str = ""  # the site-key generation that wrapped it ("" : unknown, try each)
    recovery_id: str = ""  # the recovery key it is wrapped for
    # A study whose first objects carried this key in their headers (sealed before key records)
    # keeps doing so: it cannot be shredded anyway, and a rebuild finds its key in any object.
    embedded: bool = False

    def record(self) -> "KeyRecord":
        return KeyRecord(self.key_id, self.kek_id, self.wrapped_by_site, self.recovery_id, self.wrapped_for_recovery)


KEY_RECORD_FORMAT = "dicomvault-key-record-v1"


@dataclass(frozen=True)
class KeyRecord:
    """What a site holds of a study's key: its data key wrapped by the site key and for the
    recovery key, and nothing else (no PHI, no plaintext key).

    Objects sealed since key records exist name only their key id, so these small records
    are the one place a study's key lives outside the catalog. They are deletable on every
    site, Object Lock buckets included: deleting them everywhere is the crypto-shred.
    Both wrapped forms are AEAD-bound to the key id, so a record altered or moved to another
    name fails to open instead of giving a wrong key."""

    key_id: str
    kek_id: str
    wrapped_by_site: bytes
    recovery_id: str
    wrapped_for_recovery: bytes

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": KEY_RECORD_FORMAT, "key_id": self.key_id, "kek_id": self.kek_id,
            "wrapped_site": base64.b64encode(self.wrapped_by_site).decode(), "recovery_id": self.recovery_id,
            "wrapped_recovery": base64.b64encode(self.wrapped_for_recovery).decode(),
        }, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, key_id: str | None = None) -> "KeyRecord":
        try:
            fields = json.loads(data)
            if fields.get("format") != KEY_RECORD_FORMAT:
                raise ValueError(f"unknown format {fields.get('format')!r}")
            record = cls(str(fields["key_id"]), str(fields["kek_id"]), base64.b64decode(fields["wrapped_site"]),
                         str(fields["recovery_id"]), base64.b64decode(fields["wrapped_recovery"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyError_(f"key record is not a dicomvault key record: {exc}") from exc
        if key_id is not None and record.key_id != key_id:
            raise KeyError_(f"key record stored as {key_id} is for key {record.key_id}")
        return record


def public_key_id(public_key: X25519PublicKey) -> str:
    """A short id of a recovery key (its public half), shown by ``status`` and kept in records."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


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


def _fingerprint_of(site_key: bytes) -> str:
    return hashlib.sha256(_hkdf(site_key, b"dicomvault fingerprint v1")).hexdigest()[:16]


def _parse_site_keys(text: str, where: str) -> tuple[list[bytes], bytes | None, str | None, dict[str, float]]:
    """(site-key generations oldest first, naming key, fingerprint, creation times by
    generation id) of a site key file; naming and fingerprint are None for a v1 file (derived
    from its one key)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]

    def b64(value: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise KeyError_(f"{where}: site key is not valid base64") from exc

    if len(lines) == 2 and lines[0] == SITE_KEY_HEADER:
        return [b64(lines[1])], None, None, {}
    if not lines or lines[0] != SITE_KEYS_HEADER:
        raise KeyError_(f"{where} is not a dicomvault site key file")
    naming, fingerprint, keks = None, None, []
    created: dict[str, float] = {}
    for line in lines[1:]:
        kind, _, value = line.partition(" ")
        if kind == "naming":
            naming = b64(value)
        elif kind == "fingerprint":
            fingerprint = value
        elif kind == "kek":  # kek <id> <key> [<created, unix seconds>]
            parts = value.split()
            if len(parts) not in (2, 3):
                raise KeyError_(f"{where}: a kek line is 'kek <id> <base64 key> [<created>]'")
            keks.append(b64(parts[1]))
            if len(parts) == 3:
                created[_fingerprint_of(keks[-1])] = float(parts[2])
        else:
            raise KeyError_(f"{where}: unknown line {kind!r}")
    if naming is None or fingerprint is None or not keks:
        raise KeyError_(f"{where}: needs a naming key, a fingerprint and at least one kek line")
    return keks, naming, fingerprint, created


class Keyring:
    """The keys an archive host holds: the site key(s) and the recovery PUBLIC key.

    A site key has generations (``keys rotate`` adds one). The newest wraps every new study
    key; older ones stay only while some key record is still wrapped by them. What never
    changes is the naming key (object ids are keyed MACs: renaming every object is not an
    option) and the archive fingerprint; both come from the first site key, and after a
    rotation the file keeps them, not that key.
    """

    def __init__(self, site_key: bytes | list[bytes], recovery_public: X25519PublicKey, *,
                 naming_key: bytes | None = None, fingerprint: str | None = None,
                 created: dict[str, float] | None = None) -> None:
        generations = [site_key] if isinstance(site_key, bytes) else list(site_key)
        if not generations or any(len(key) != 32 for key in generations):
            raise KeyError_("site key must be 32 bytes")
        self._generations = generations
        self._keks = {_fingerprint_of(key): AESGCM(_hkdf(key, b"dicomvault key-encryption key v1"))
                      for key in generations}
        self.kek_id = _fingerprint_of(generations[-1])
        self._id_key = naming_key or _hkdf(generations[0], b"dicomvault object id key v1")
        self.fingerprint = fingerprint or _fingerprint_of(generations[0])
        self.recovery_public = recovery_public
        self.recovery_id = public_key_id(recovery_public)
        self.created = dict(created or {})  # generation id -> when `keys rotate` made it (unknown: the first)

    @property
    def kek_ids(self) -> list[str]:
        """Site-key generations held, oldest first; the last wraps new keys."""
        return [_fingerprint_of(key) for key in self._generations]

    @classmethod
    def load(cls, site_key_file: Path, recovery_public_file: Path) -> "Keyring":
        try:
            text = site_key_file.read_text()
        except OSError as exc:
            raise KeyError_(f"cannot read site key {site_key_file}: {exc}; run `dicomvault init`") from exc
        keks, naming, fingerprint, created = _parse_site_keys(text, str(site_key_file))
        try:
            pub = serialization.load_pem_public_key(recovery_public_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise KeyError_(f"cannot read recovery public key {recovery_public_file}: {exc}") from exc
        if not isinstance(pub, X25519PublicKey):
            raise KeyError_(f"{recovery_public_file} is not an X25519 public key")
        return cls(keks, pub, naming_key=naming, fingerprint=fingerprint, created=created)

    @classmethod
    def from_text(cls, text: str, recovery_public: X25519PublicKey, where: str = "site key file") -> "Keyring":
        keks, naming, fingerprint, created = _parse_site_keys(text, where)
        return cls(keks, recovery_public, naming_key=naming, fingerprint=fingerprint, created=created)

    def to_text(self) -> str:
        """The site key file for these keys (v1 while there is a single original key)."""
        if len(self._generations) == 1 and self.fingerprint == _fingerprint_of(self._generations[0]):
            return (f"# dicomvault site key. Keep on this host only, mode 0600.\n{SITE_KEY_HEADER}\n"
                    f"{base64.b64encode(self._generations[0]).decode()}\n")
        lines = ["# dicomvault site keys (after `keys rotate`). Keep on this host only, mode 0600.",
                 "# naming: object names; kek: key-encryption keys, oldest first, the last wraps new keys.",
                 SITE_KEYS_HEADER, f"naming {base64.b64encode(self._id_key).decode()}",
                 f"fingerprint {self.fingerprint}"]
        for key in self._generations:
            kek_id = _fingerprint_of(key)
            when = f" {self.created[kek_id]:.0f}" if kek_id in self.created else ""
            lines.append(f"kek {kek_id} {base64.b64encode(key).decode()}{when}")
        return "\n".join(lines) + "\n"

    def rotated(self, recovery_public: X25519PublicKey | None = None) -> "Keyring":
        """The same archive with a new newest site-key generation (and recovery key, if given)."""
        fresh = secrets.token_bytes(32)
        return Keyring([*self._generations, fresh], recovery_public or self.recovery_public,
                       naming_key=self._id_key, fingerprint=self.fingerprint,
                       created={**self.created, _fingerprint_of(fresh): time.time()})

    def retiring(self, kek_ids: set[str]) -> "Keyring":
        """These keys without the generations in ``kek_ids`` (never the newest)."""
        kept = [key for key in self._generations[:-1] if _fingerprint_of(key) not in kek_ids]
        return Keyring([*kept, self._generations[-1]], self.recovery_public, naming_key=self._id_key,
                       fingerprint=self.fingerprint, created=self.created)

    def site_key_for_snapshot(self) -> bytes:
        """The newest raw site key, sealed inside catalog snapshots (jobs/rebuild/snapshot.py),
        with ``to_text`` (every generation, the naming key): see there why that escrow grants
        nothing the recovery key holder does not already have."""
        return self._generations[-1]

    def recovery_public_pem(self) -> bytes:
        return self.recovery_public.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)

    def object_id(self, content_sha256: bytes, key_id: str = "") -> str:
        """Keyed name of an object: equal content gives equal ids, but the id leaks no hash.

        Objects sealed under a key record also mix in their key id: a study deleted and then
        received again gets a new key, so its objects get new names instead of colliding
        with the shredded copies a write-once site still holds under the old ones."""
        return hmac.new(self._id_key, content_sha256 + key_id.encode(), hashlib.sha256).hexdigest()

    def _wrap(self, data_key: bytes, key_id: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._keks[self.kek_id].encrypt(nonce, data_key, key_id.encode())

    def new_study_key(self) -> StudyKey:
        key_id = secrets.token_hex(16)
        data_key = AESGCM.generate_key(bit_length=256)
        return StudyKey(key_id, data_key, self._wrap(data_key, key_id),
                        wrap_for_recovery(self.recovery_public, data_key, key_id), self.kek_id, self.recovery_id)

    def unwrap(self, key_id: str, wrapped_by_site: bytes, kek_id: str = "") -> bytes:
        """The data key; ``kek_id`` "" (an object header from before key records) tries each generation."""
        candidates = [self._keks[kek_id]] if kek_id in self._keks else [] if kek_id else list(self._keks.values())
        if not candidates:
            raise KeyError_(f"site key generation {kek_id} is not held here (retired after `keys rotate`?)")
        for kek in reversed(candidates):
            try:
                return kek.decrypt(wrapped_by_site[:12], wrapped_by_site[12:], key_id.encode())
            except InvalidTag:
                continue
        raise KeyError_("site key does not open this data key (wrong site key or altered header)")

    def study_key_from_wrapped(self, key_id: str, wrapped_by_site: bytes, wrapped_for_recovery: bytes,
                               kek_id: str = "", recovery_id: str = "", embedded: bool = False) -> StudyKey:
        return StudyKey(key_id, self.unwrap(key_id, wrapped_by_site, kek_id), wrapped_by_site, wrapped_for_recovery,
                        kek_id, recovery_id, embedded)

    def rewrap(self, record: KeyRecord) -> KeyRecord:
        """The record wrapped by the newest site key and for the current recovery key (rotation:
        the data key, and so every payload sealed with it, is untouched)."""
        data_key = self.unwrap(record.key_id, record.wrapped_by_site, record.kek_id)
        recovery = record.wrapped_for_recovery if record.recovery_id == self.recovery_id else \
            wrap_for_recovery(self.recovery_public, data_key, record.key_id)
        wrapped = record.wrapped_by_site if record.kek_id == self.kek_id else self._wrap(data_key, record.key_id)
        return KeyRecord(record.key_id, self.kek_id, wrapped, self.recovery_id, recovery)


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
    public = new_recovery_key(recovery_private_file)
    write_host_keys(site_key_file, recovery_public_file, secrets.token_bytes(32), public)


def write_host_keys(site_key_file: Path, recovery_public_file: Path, site_key: bytes | Keyring,
                    recovery_public: X25519PublicKey) -> None:
    """Write the two keys an archive host holds (``init``, or ``rebuild-index`` restoring them)."""
    keyring = site_key if isinstance(site_key, Keyring) else Keyring(site_key, recovery_public)
    _write_private(site_key_file, keyring.to_text().encode())
    public_pem = recovery_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_private(recovery_public_file, public_pem)
    os.chmod(recovery_public_file, 0o644)


def replace_host_keys(site_key_file: Path, recovery_public_file: Path, keyring: Keyring) -> None:
    """Atomically replace the host's key files (``keys rotate``): a crash leaves the old or the new."""
    for path, data, mode in ((site_key_file, keyring.to_text().encode(), 0o600),
                             (recovery_public_file, keyring.recovery_public_pem(), 0o644)):
        temporary = path.with_name(path.name + ".new")
        temporary.unlink(missing_ok=True)
        _write_private(temporary, data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_recovery_key(recovery_private_file: Path) -> X25519PublicKey:
    """A fresh recovery key pair: the private half written (once) to its file, the public returned."""
    if recovery_private_file.exists():
        raise KeyError_(f"{recovery_private_file} already exists; refusing to overwrite a key")
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(recovery_private_file, RECOVERY_KEY_PEM_NOTE.encode() + pem)
    return private.public_key()
