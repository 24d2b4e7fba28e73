"""The stored object format: a small plaintext header, then AES-256-GCM sealed segments.

Layout (all integers big-endian)::

    b"DVLTOBJ1"            magic and format version
    u32 header_length
    header                 JSON, no PHI: algorithm, key id, nonce prefix, and (only in objects
                           sealed before key records, and in catalog snapshots) the wrapped
                           data keys
    segments               each = AES-256-GCM(data key, nonce_prefix || u32 index,
                           plaintext[i*SEG:(i+1)*SEG], aad = sha256(magic+header) || index || final)

The plaintext is ``u32 metadata_length || metadata JSON || payload``. Sealing in segments
keeps any one GCM call far below its size limit and lets large objects stream later; the
index and the final flag in the associated data make reordering, dropping or truncating
segments fail authentication, so an altered object can never decrypt to wrong bytes.

Where the data key lives decides whether an object can be crypto-shredded. An object that
carries its wrapped keys can be opened by whoever holds the recovery key for as long as the
object exists, which on a write-once site (Object Lock, WORM, a partner vault that keeps
replicas) is beyond our control. So objects name their key id only (``embed_keys=False``);
the study's key record (``keys.KeyRecord``) lives in the catalog and as a small deletable
object on every site, and deleting those is deleting every readable copy. Catalog snapshots
still embed theirs: a snapshot is opened with the recovery key alone, before anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import KeyError_, Keyring, RecoveryKey, StudyKey

MAGIC = b"DVLTOBJ1"
SEGMENT_SIZE = 4 * 1024 * 1024
TAG_SIZE = 16


class DecryptionError(Exception):
    """An object failed authentication or is not a dicomvault object: never trust its bytes."""


@dataclass(frozen=True)
class ObjectHeader:
    key_id: str
    wrapped_by_site: bytes
    wrapped_for_recovery: bytes
    nonce_prefix: bytes
    raw: bytes

    @property
    def embeds_keys(self) -> bool:
        """True for objects that carry their wrapped data key (sealed before key records)."""
        return bool(self.wrapped_by_site)


@dataclass(frozen=True)
class EncryptedObject:
    header: ObjectHeader
    metadata: dict[str, Any]
    payload: bytes


def _segment_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


def seal_object(study_key: StudyKey, metadata: dict[str, Any], payload: bytes, *, embed_keys: bool = False) -> bytes:
    """Seal ``payload`` (and its metadata) under the study key. With ``embed_keys`` the
    wrapped data keys go into the header (catalog snapshots); without, only the key id does
    (objects: shreddable by deleting the study's key records)."""
    nonce_prefix = os.urandom(8)
    fields = {
        "alg": "AES-256-GCM-SEG",
        "segment": SEGMENT_SIZE,
        "key_id": study_key.key_id,
        "nonce_prefix": base64.b64encode(nonce_prefix).decode(),
    }
    if embed_keys:
        fields["wrapped_site"] = base64.b64encode(study_key.wrapped_by_site).decode()
        fields["wrapped_recovery"] = base64.b64encode(study_key.wrapped_for_recovery).decode()
    header = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    prefix = MAGIC + struct.pack(">I", len(header)) + header
    digest = hashlib.sha256(prefix).digest()
    meta = json.dumps(metadata, separators=(",", ":"), sort_keys=True).encode()
    # The plaintext is head + payload; each segment is cut from the two without building it
    # whole (a copy of the payload as large as the instance: 256 MiB more at the peak).
    head, body = struct.pack(">I", len(meta)) + meta, memoryview(payload)
    total = len(head) + len(body)
    aead = AESGCM(study_key.data_key)
    parts = [prefix]
    count = max(1, -(-total // SEGMENT_SIZE))
    for index in range(count):
        start, end = index * SEGMENT_SIZE, min((index + 1) * SEGMENT_SIZE, total)
        chunk = head[start:end] + bytes(body[max(0, start - len(head)) : max(0, end - len(head))])
        nonce = nonce_prefix + struct.pack(">I", index)
        parts.append(aead.encrypt(nonce, chunk, _segment_aad(digest, index, index == count - 1)))
    return b"".join(parts)


def read_header(blob: bytes) -> tuple[ObjectHeader, int]:
    if len(blob) < len(MAGIC) + 4 or blob[: len(MAGIC)] != MAGIC:
        raise DecryptionError("not a dicomvault object (bad magic); the file is foreign or damaged")
    (length,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    end = len(MAGIC) + 4 + length
    if length > 1 << 20 or end > len(blob):
        raise DecryptionError("object header is truncated or corrupt")
    raw = blob[len(MAGIC) + 4 : end]
    try:
        fields = json.loads(raw)
        header = ObjectHeader(
            key_id=str(fields["key_id"]),
            wrapped_by_site=base64.b64decode(fields.get("wrapped_site", "")),
            wrapped_for_recovery=base64.b64decode(fields.get("wrapped_recovery", "")),
            nonce_prefix=base64.b64decode(fields["nonce_prefix"]),
            raw=raw,
        )
        if fields.get("alg") != "AES-256-GCM-SEG" or int(fields["segment"]) != SEGMENT_SIZE:
            raise DecryptionError(f"unsupported object algorithm {fields.get('alg')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise DecryptionError(f"object header is corrupt: {exc}") from exc
    return header, end


def _data_key(header: ObjectHeader, keyring: Keyring | None, recovery: RecoveryKey | None) -> bytes:
    if not header.embeds_keys:
        raise DecryptionError(f"object names key {header.key_id} but carries no key: open it with its key record")
    try:
        if keyring is not None:
            return keyring.unwrap(header.key_id, header.wrapped_by_site)
        if recovery is not None:
            return recovery.unwrap(header.wrapped_for_recovery, header.key_id)
    except KeyError_ as exc:
        raise DecryptionError(str(exc)) from exc
    raise DecryptionError("no key given to open the object")


def open_object(
    blob: bytes,
    keyring: Keyring | None = None,
    recovery: RecoveryKey | None = None,
    data_key: bytes | None = None,
) -> EncryptedObject:
    """Authenticate and decrypt a whole object, or raise DecryptionError. Never returns partial data."""
    header, offset = read_header(blob)
    digest = hashlib.sha256(blob[:offset]).digest()
    key = data_key if data_key is not None else _data_key(header, keyring, recovery)
    aead = AESGCM(key)
    body = memoryview(blob)[offset:]
    sealed_segment = SEGMENT_SIZE + TAG_SIZE
    count = max(1, -(-len(body) // sealed_segment))
    out = []
    for index in range(count):
        chunk = body[index * sealed_segment : (index + 1) * sealed_segment]
        nonce = header.nonce_prefix + struct.pack(">I", index)
        try:
            out.append(aead.decrypt(nonce, bytes(chunk), _segment_aad(digest, index, index == count - 1)))
        except InvalidTag as exc:
            raise DecryptionError(
                f"object failed authentication at segment {index}: its ciphertext was altered or truncated"
            ) from exc
    plaintext = b"".join(out)
    (meta_len,) = struct.unpack(">I", plaintext[:4])
    metadata = json.loads(plaintext[4 : 4 + meta_len])
    return EncryptedObject(header, metadata, plaintext[4 + meta_len :])
