"""Envelope encryption, keyed ids and the offline recovery key, in-process."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from dicomvault.crypto import DecryptionError, Keyring, RecoveryKey, generate_keys, open_object, seal_object
from dicomvault.crypto.envelope import SEGMENT_SIZE
from dicomvault.crypto.keys import KeyError_, KeyRecord, new_recovery_key


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
    blob = seal_object(study, {"sha256": "x"}, payload, embed_keys=True)
    assert open_object(blob, keyring=keyring).payload == payload
    opened = open_object(blob, recovery=recovery)
    assert opened.payload == payload and opened.metadata == {"sha256": "x"}


@pytest.mark.parametrize("where", ["first-segment", "last-byte", "header"])
def test_any_altered_byte_fails_authentication(keys, where: str) -> None:
    keyring, _ = keys
    blob = bytearray(seal_object(keyring.new_study_key(), {}, b"pixel data" * 1000, embed_keys=True))
    index = {"first-segment": len(blob) - 200, "last-byte": len(blob) - 1, "header": 40}[where]
    blob[index] ^= 0x01
    with pytest.raises(DecryptionError):
        open_object(bytes(blob), keyring=keyring)


def test_truncated_or_reordered_segments_fail(keys) -> None:
    keyring, _ = keys
    blob = seal_object(keyring.new_study_key(), {}, os.urandom(SEGMENT_SIZE * 2 + 10), embed_keys=True)
    with pytest.raises(DecryptionError):
        open_object(blob[: -(10 + 16)], keyring=keyring)  # whole last segment dropped
    with pytest.raises(DecryptionError):
        open_object(blob[:-5], keyring=keyring)


def test_wrong_site_key_cannot_open(keys, tmp_path: Path) -> None:
    keyring, _ = keys
    other_dir = tmp_path / "other"
    generate_keys(other_dir / "site.key", other_dir / "recovery.pub", other_dir / "recovery-key.pem")
    other = Keyring.load(other_dir / "site.key", other_dir / "recovery.pub")
    blob = seal_object(keyring.new_study_key(), {}, b"secret", embed_keys=True)
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


def test_an_object_sealed_for_key_records_carries_no_key_material(keys) -> None:
    """Objects name their key id only: nothing in them opens them, not even the recovery key,
    so deleting the study's key records everywhere leaves every copy unreadable."""
    keyring, recovery = keys
    study = keyring.new_study_key()
    blob = seal_object(study, {"m": 1}, b"pixels" * 100)
    assert study.wrapped_by_site not in blob and study.wrapped_for_recovery not in blob
    for kwargs in ({"keyring": keyring}, {"recovery": recovery}):
        with pytest.raises(DecryptionError, match="carries no key"):
            open_object(blob, **kwargs)
    record = KeyRecord.from_bytes(study.record().to_bytes(), study.key_id)
    assert open_object(blob, data_key=recovery.unwrap(record.wrapped_for_recovery, record.key_id)).payload == b"pixels" * 100
    assert open_object(blob, data_key=keyring.unwrap(record.key_id, record.wrapped_by_site, record.kek_id)).metadata == {"m": 1}
    with pytest.raises(KeyError_, match="is for key"):
        KeyRecord.from_bytes(study.record().to_bytes(), "0" * 32)  # a record moved to another name
    with pytest.raises(KeyError_, match="not a dicomvault key record"):
        KeyRecord.from_bytes(b"{}")


def test_object_names_mix_in_the_key_id_so_a_study_received_again_gets_new_names(keys) -> None:
    import hashlib

    keyring, _ = keys
    digest = hashlib.sha256(b"same content").digest()
    assert keyring.object_id(digest, "a" * 32) != keyring.object_id(digest, "b" * 32)
    assert keyring.object_id(digest, "") == keyring.object_id(digest)  # objects sealed before keep theirs


def test_rotation_rewraps_records_and_keeps_names_and_fingerprint(keys, tmp_path: Path) -> None:
    keyring, recovery = keys
    study = keyring.new_study_key()
    digest = bytes(32)
    private = tmp_path / "recovery-2.pem"
    rotated = keyring.rotated(new_recovery_key(private))
    assert rotated.kek_ids == [keyring.kek_id, rotated.kek_id] and rotated.kek_id != keyring.kek_id
    assert rotated.fingerprint == keyring.fingerprint and rotated.object_id(digest) == keyring.object_id(digest)
    rewrapped = rotated.rewrap(study.record())
    assert rewrapped.kek_id == rotated.kek_id and rewrapped.recovery_id == rotated.recovery_id != keyring.recovery_id
    assert rotated.unwrap(study.key_id, rewrapped.wrapped_by_site, rewrapped.kek_id) == study.data_key
    assert RecoveryKey.load(private).unwrap(rewrapped.wrapped_for_recovery, study.key_id) == study.data_key
    with pytest.raises(KeyError_):
        recovery.unwrap(rewrapped.wrapped_for_recovery, study.key_id)  # the old recovery key no longer opens it
    # the key file keeps every generation, and without the retired one the old wrapping is dead
    reloaded = Keyring.from_text(rotated.to_text(), rotated.recovery_public)
    assert reloaded.kek_ids == rotated.kek_ids and reloaded.object_id(digest) == keyring.object_id(digest)
    retired = reloaded.retiring({keyring.kek_id})
    assert retired.kek_ids == [rotated.kek_id] and retired.fingerprint == keyring.fingerprint
    assert "naming" in retired.to_text() and base64.b64encode(keyring.site_key_for_snapshot()).decode() not in retired.to_text()
    with pytest.raises(KeyError_, match="not held here"):
        retired.unwrap(study.key_id, study.wrapped_by_site, study.kek_id)
    assert retired.unwrap(study.key_id, rewrapped.wrapped_by_site, rewrapped.kek_id) == study.data_key
