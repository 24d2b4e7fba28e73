"""Where study keys live, and the one place that finds a data key for an object.

A study's data key exists as a key record (``crypto/keys.py`` ``KeyRecord``: the key wrapped
by the site key and for the recovery key) in three kinds of place: the catalog's
``study_keys`` row, the primary site's ``keys/<key id>`` (written before any object sealed
under it is acknowledged, so the primary alone plus the recovery key opens everything it
holds), and every replica site (the replicator puts the record before the first object that
needs it, ``replicate/targets.py``). Objects sealed since then name their key id only, so
deleting those records everywhere (the deletion engine: the catalog row in its transaction,
``delete_key_record`` on each site) leaves no readable copy, whoever keeps the ciphertext. Objects sealed before carry their key (``embedded`` rows): they open from their
own header and cannot be shredded, which ``status`` says.

A deletion in one process must reach the caches of another (a CLI ``delete`` while ``serve``
ingests): the catalog notices a new deletion record at its next write or ingest
(``Catalog.notice_deletions``) and calls ``forget_all`` here.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from dicomvault.catalog import Catalog
from dicomvault.catalog import keys as key_rows
from dicomvault.crypto.envelope import ObjectHeader
from dicomvault.crypto.keys import KeyError_, KeyRecord, Keyring, StudyKey
from dicomvault.sites import Site, SiteError

log = logging.getLogger(__name__)

CACHE_SIZE = 4096


def record_of(row: Any) -> KeyRecord:
    """A catalog ``study_keys`` row as the key record every site holds."""
    return KeyRecord(row.key_id, row.kek_id, bytes(row.wrapped_site), row.recovery_id, bytes(row.wrapped_recovery))


class KeyStore:
    def __init__(self, catalog: Catalog, keyring: Keyring, primary: Site) -> None:
        self.catalog = catalog
        self.keyring = keyring
        self.primary = primary
        self._data_keys: OrderedDict[str, bytes] = OrderedDict()
        self._by_study: dict[str, StudyKey] = {}
        self._lock = threading.Lock()
        # Sites besides the primary that hold key records to read from, when the catalog does
        # not know a key yet (``rebuild-index`` reading another site's objects).
        self.sources: list[Site] = []
        self._fetched: dict[str, KeyRecord] = {}

        catalog.on_deleted.append(self.forget_all)

    # -- caches --------------------------------------------------------------------------------

    def forget(self, key_ids: Iterable[str]) -> None:
        """Keys were deleted or re-wrapped here: drop them from this process's caches."""
        gone = set(key_ids)
        with self._lock:
            for key_id in gone:
                self._data_keys.pop(key_id, None)
                self._fetched.pop(key_id, None)
            self._by_study = {uid: key for uid, key in self._by_study.items() if key.key_id not in gone}

    def forget_all(self) -> None:
        """``Catalog.on_deleted``: another process deleted something. Rebinds instead of taking
        ``_lock``: called with the catalog's write lock held, which ``study_key`` takes while
        holding ``_lock``."""
        self._data_keys = OrderedDict()
        self._by_study = {}
        self._fetched = {}

    # -- the write path ------------------------------------------------------------------------

    def study_key(self, study_uid: str) -> StudyKey:
        """The study's data key; a new study gets one, its key record durable on the primary
        site and in the catalog before this returns (before any object is sealed with it)."""
        with self._lock:
            cached = self._by_study.get(study_uid)
            if cached is not None:
                return cached
            with self.catalog.write() as conn:
                row = key_rows.by_study(conn, study_uid)
                if row is None:
                    key = self.keyring.new_study_key()
                    self.primary.put_key(key.key_id, key.record().to_bytes())
                    key_rows.add(conn, study_uid, key.key_id, key.wrapped_by_site, key.wrapped_for_recovery,
                                 kek_id=key.kek_id, recovery_id=key.recovery_id, embedded=False)
                else:
                    key = self.keyring.study_key_from_wrapped(row.key_id, row.wrapped_site, row.wrapped_recovery,
                                                              row.kek_id, row.recovery_id, embedded=row.embedded)
            if len(self._by_study) > 10000:
                self._by_study.clear()
            self._by_study[study_uid] = key
            return key

    def adopt(self, conn: Any, study_uid: str, header: ObjectHeader) -> None:
        """Index the key of an object found on a site (crash recovery, rebuild): from its own
        header if it embeds one, else from its key record (``sources``, then the primary)."""
        if key_rows.by_study(conn, study_uid) is not None:
            return
        if header.embeds_keys:
            key_rows.add(conn, study_uid, header.key_id, header.wrapped_by_site, header.wrapped_for_recovery,
                         embedded=True)
            return
        record = self._fetched.get(header.key_id) or self.fetch_record(
            header.key_id, [*self.sources, self.primary])
        if self.sources:  # found elsewhere (a rebuild): the primary must hold it too
            self.primary.put_key(record.key_id, record.to_bytes())
        key_rows.add(conn, study_uid, record.key_id, record.wrapped_by_site, record.wrapped_for_recovery,
                     kek_id=record.kek_id, recovery_id=record.recovery_id, embedded=False)

    @staticmethod
    def fetch_record(key_id: str, sites: list[Site]) -> KeyRecord:
        """The key record from the first site that holds it; KeyError if none does."""
        for site in sites:
            try:
                return KeyRecord.from_bytes(site.get_key(key_id), key_id)
            except KeyError:
                continue
            except (SiteError, KeyError_) as exc:
                log.error("ALERT: key record %s on %s is unusable: %s", key_id, site.url, exc)
        raise KeyError(f"no site holds the key record of key {key_id}: its study was deleted (shredded)")

    # -- the read path -------------------------------------------------------------------------

    def data_key(self, header: ObjectHeader) -> bytes:
        """The data key that opens an object with this header. KeyError_ when it is gone."""
        with self._lock:
            key = self._data_keys.get(header.key_id)
            if key is not None:
                self._data_keys.move_to_end(header.key_id)
                return key
        row = self.catalog.study_key(header.key_id)
        if row is not None and row.wrapped_site:
            key = self.keyring.unwrap(row.key_id, bytes(row.wrapped_site), row.kek_id)
        elif header.embeds_keys:
            key = self.keyring.unwrap(header.key_id, header.wrapped_by_site)
        else:
            key = self._unwrap_fetched(header.key_id)
        with self._lock:
            self._data_keys[header.key_id] = key
            if len(self._data_keys) > CACHE_SIZE:
                self._data_keys.popitem(last=False)
        return key

    def _unwrap_fetched(self, key_id: str) -> bytes:
        """A key the catalog does not hold yet (crash recovery, a rebuild): from a site's record."""
        record = self._fetched.get(key_id)
        if record is None:
            try:
                record = self.fetch_record(key_id, [*self.sources, self.primary])
            except KeyError as exc:
                raise KeyError_(f"the key of this object ({key_id}) is in no catalog row and no key record: "
                                "its study was deleted and its copies shredded") from exc
            with self._lock:
                if len(self._fetched) > CACHE_SIZE:
                    self._fetched.clear()
                self._fetched[key_id] = record
        return self.keyring.unwrap(key_id, record.wrapped_by_site, record.kek_id)

    def record(self, key_id: str) -> bytes | None:
        """The key record to put on a replica site, or None when the catalog has none to give
        (an embedded key: its objects carry it)."""
        row = self.catalog.study_key(key_id)
        if row is None or row.embedded or not row.wrapped_site:
            return None
        return record_of(row).to_bytes()


def delete_key_record(site: Site, key_id: str) -> None:
    """Delete the key record ``key_id`` from ``site`` (every version of it) and prove it is
    gone: SiteError when it cannot be, or is still readable after (a bucket whose default
    retention locked it). The deletion engine calls this with each site's objects."""
    site.delete_key(key_id)
    try:
        site.get_key(key_id)
    except KeyError:
        return
    raise SiteError(f"key record {key_id} is still readable on {site.url} after its deletion "
                    "(a default retention on the bucket?): the copies there are NOT shredded")
