"""What ``status`` and ``keys status`` say about keys: ids, ages, and what cannot be shredded."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dicomvault.catalog import keys as key_rows

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive


def _age_days(path: Any, now: float) -> int | None:
    try:
        return int((now - path.stat().st_mtime) // 86400)
    except OSError:
        return None


def key_state(archive: "Archive") -> dict[str, Any]:
    now = time.time()
    keyring = archive.keyring
    with archive.catalog.read() as conn:
        summary = key_rows.summary(conn)
    file_age = _age_days(archive.settings.site_key_file, now)
    generations = [{"id": kek_id, "current": kek_id == keyring.kek_id,
                    "study_keys": summary["by_kek"].get(kek_id, 0) + (summary["by_kek"].get("", 0) if index == 0 else 0),
                    "age_days": int((now - keyring.created[kek_id]) // 86400) if kek_id in keyring.created
                    else file_age if len(keyring.kek_ids) == 1 else None}
                   for index, kek_id in enumerate(keyring.kek_ids)]
    others = {rid: count for rid, count in summary["by_recovery"].items() if rid not in ("", keyring.recovery_id)}
    return {
        "fingerprint": keyring.fingerprint,
        "site_keys": generations,
        "recovery_key": {"id": keyring.recovery_id,
                         "study_keys": summary["by_recovery"].get(keyring.recovery_id, 0)
                         + summary["by_recovery"].get("", 0),
                         "age_days": _age_days(archive.settings.recovery_public_key_file, now)},
        "other_recovery_keys": others,
        "study_keys": summary["total"],
        "shreddable": summary["total"] - summary["embedded"],
        "not_shreddable": summary["embedded"],
    }
