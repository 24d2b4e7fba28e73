"""Study keys' SQL: the catalog's copy of every study's key record (crypto/keys.py).

The catalog is one of the places a study key lives (the others: a key record on every site).
Rows made before key records exist are ``embedded``: their objects carry the key too.
Snapshots leave the wrapped keys of the other rows out (``snapshot_row``): a snapshot on a
write-once site would otherwise keep a shredded study readable with the recovery key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from . import schema as t

_k = t.study_keys


def add(conn: Connection, study_uid: str, key_id: str, wrapped_site: bytes, wrapped_recovery: bytes, *,
        kek_id: str = "", recovery_id: str = "", embedded: bool = False) -> None:
    conn.execute(insert(_k).values(key_id=key_id, study_uid=study_uid, wrapped_site=wrapped_site,
                                   wrapped_recovery=wrapped_recovery, created_at=time.time(), kek_id=kek_id,
                                   recovery_id=recovery_id, embedded=embedded))


def by_key_id(conn: Connection, key_id: str) -> Any:
    return conn.execute(select(_k).where(_k.c.key_id == key_id)).first()


def by_study(conn: Connection, study_uid: str) -> Any:
    return conn.execute(select(_k).where(_k.c.study_uid == study_uid)).first()


def rows(conn: Connection, batch: int = 1000) -> Iterator[Any]:
    """Every key row, in key id order, a batch at a time (rotation walks them all)."""
    after = ""
    while True:
        chunk = list(conn.execute(select(_k).where(_k.c.key_id > after).order_by(_k.c.key_id).limit(batch)))
        yield from chunk
        if len(chunk) < batch:
            return
        after = chunk[-1].key_id


def rewrap(conn: Connection, key_id: str, *, kek_id: str, wrapped_site: bytes, recovery_id: str,
           wrapped_recovery: bytes) -> None:
    conn.execute(update(_k).where(_k.c.key_id == key_id).values(
        kek_id=kek_id, wrapped_site=wrapped_site, recovery_id=recovery_id, wrapped_recovery=wrapped_recovery))


def missing_wrapping(conn: Connection) -> list[str]:
    """Key ids whose wrapped keys a snapshot left out: a rebuild fills them from key records."""
    return list(conn.execute(select(_k.c.key_id).where(func.length(_k.c.wrapped_site) == 0)).scalars())


def remove(conn: Connection, key_id: str) -> None:
    conn.execute(delete(_k).where(_k.c.key_id == key_id))


def summary(conn: Connection) -> dict[str, Any]:
    """Counts by site-key generation, by recovery key, and of keys their objects embed."""
    by_kek = dict(conn.execute(select(_k.c.kek_id, func.count()).group_by(_k.c.kek_id)).all())
    by_recovery = dict(conn.execute(select(_k.c.recovery_id, func.count()).group_by(_k.c.recovery_id)).all())
    embedded = conn.execute(select(func.count()).where(_k.c.embedded.is_(True))).scalar() or 0
    oldest = conn.execute(select(func.min(_k.c.created_at))).scalar()
    return {"by_kek": {str(k): int(v) for k, v in by_kek.items()},
            "by_recovery": {str(k): int(v) for k, v in by_recovery.items()},
            "embedded": int(embedded), "total": int(sum(by_kek.values())), "oldest": oldest}


def snapshot_row(values: list[Any], columns: list[str]) -> list[Any]:
    """A study_keys row as a snapshot holds it: without the wrapped keys unless embedded."""
    row = dict(zip(columns, values))
    if not row.get("embedded"):
        for name in ("wrapped_site", "wrapped_recovery"):
            values[columns.index(name)] = b""
    return values
