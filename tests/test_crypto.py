"""Envelope encryption, keyed ids and the offline recovery key, in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomvault.crypto import DecryptionError, Keyring, RecoveryKey, generate_keys, open_object, seal_object
from dicomvault.crypto.envelope import SEGMENT_SIZE
from dicomvault.crypto.keys import KeyError_


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Keyring, RecoveryKey]:
    generate_keys(tmp_path / "site.key", tmp_path / "recovery.pub", tmp_path / "recovery-key.pem")
    return (
        Keyring.load(tmp_path / "site.key", tmp_path / "recovery.pub"),
        RecoveryKey.load(tmp_path / "recovery-key.pem"),
    )


def test_round_trip_with_site_key_and_with_recovery_key_alone(keys) -> None:
    keyring, recovery = keys
    study = keyring.new_study_key()
    payload = os.urandom(SEGMENT_SIZE * 2 + 12345)  # three segments
    blob = seal_object(study, {"sha256": "x"}, payload)
    assert open_object(blob, keyring=keyring).payload == payload
    opened = open_object(blob, recovery=recovery)
    assert opened.payload == payload and opened.metadata == {"sha256": "x"}


@pytest.mark.parametrize("where", ["first-segment", "last-byte", "header"])
def test_any_altered_byte_fails_authentication(keys, where: str) -> None:
    keyring, _ = keys
    blob = bytearray(seal_object(keyring.new_study_key(), {}, b"pixel data" * 1000))
    index = {"first-segment": len(blob) - 200, "last-byte": len(blob) - 1, "header": 40}[where]
    blob[index] ^= 0x01
    with pytest.raises(DecryptionError):
        open_object(bytes(blob), keyring=keyring)


def test_truncated_or_reordered_segments_fail(keys) -> None:
    keyring, _ = keys
    blob = seal_object(keyring.new_study_key(), {}, os.urandom(SEGMENT_SIZE * 2 + 10))
    with pytest.raises(DecryptionError):
        open_object(blob[: -(10 + 16)], keyring=keyring)  # whole last segment dropped
    with pytest.raises(DecryptionError):
        open_object(blob[:-5], keyring=keyring)


def test_wrong_site_key_cannot_open(keys, tmp_path: Path) -> None:
    keyring, _ = keys
    other_dir = tmp_path / "other"
    generate_keys(other_dir / "site.key", other_dir / "recovery.pub", other_dir / "recovery-key.pem")
    other = Keyring.load(other_dir / "site.key", other_dir / "recovery.pub")
    blob = seal_object(keyring.new_study_key(), {}, b"secret")
    with pytest.raises(DecryptionError):
        open_object(blob, keyring=other)
    with pytest.raises(DecryptionError):
        open_object(blob, recovery=RecoveryKey.load(other_dir / "recovery-key.pem"))


def test_object_ids_are_keyed_not_plain_hashes(keys, tmp_path: Path) -> None:
    import hashlib

    keyring, _ = keys
    digest = hashlib.sha256(b"same content").digest()
    assert keyring.object_id(digest) == keyring.object_id(digest)
    assert keyring.object_id(digest) != digest.hex()
    other_dir = tmp_path / "other"
    generate_keys(other_dir / "site.key", other_dir / "recovery.pub", other_dir / "recovery-key.pem")
    assert Keyring.load(other_dir / "site.key", other_dir / "recovery.pub").object_id(digest) != keyring.object_id(digest)


def test_keys_are_never_overwritten_and_private_files_are_0600(tmp_path: Path) -> None:
    generate_keys(tmp_path / "site.key", tmp_path / "recovery.pub", tmp_path / "recovery-key.pem")
    assert (tmp_path / "site.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "recovery-key.pem").stat().st_mode & 0o777 == 0o600
    assert b"OFFLINE" in (tmp_path / "recovery-key.pem").read_bytes()
    with pytest.raises(KeyError_, match="refusing to overwrite"):
        generate_keys(tmp_path / "site.key", tmp_path / "recovery.pub", tmp_path / "recovery-key.pem")


def test_garbage_key_file_gives_clear_error(tmp_path: Path) -> None:
    (tmp_path / "site.key").write_text("not a key\n")
    (tmp_path / "recovery.pub").write_text("nope")
    with pytest.raises(KeyError_, match="not a dicomvault site key"):
        Keyring.load(tmp_path / "site.key", tmp_path / "recovery.pub")
