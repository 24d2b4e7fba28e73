"""The protection state (archive/readiness.py): protected / at risk / unprotected, in
`status` (first line, exit 0 / 1 / 2), `status --json` ("protection") and `/readyz`.

One real archive walks the life of a hospital install: images stored with no second site
(unprotected), an off-site file site added and copied (protected), a NAS added while `serve`
runs (not started, at risk, until restart), the off-site directory replaced by a file
(at risk, site down). The rules themselves are unit-tested on plain dicts.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import Vault, wait_until
from dicomvault.archive.readiness import assess, headline
from test_replication_file import make_instances, send


# --- the rules, on plain facts --------------------------------------------------------------

def _facts(**sites: dict) -> dict:
    return {"counts": {"instances": 10}, "policy": {"copies": 2, "offsite_copies": 1},
            "sites": {"primary": {"ok": True}, **sites},
            "scrub": {"enabled": True, "period": "30d", "sites": {}, "quarantined": {}},
            "drills": {"enabled": True, "every": "7d", "sites": {}},
            "snapshots": {"enabled": True, "every": "6h", "sites": {}}}


def _judge(facts: dict, counted: dict | None = None, key: str | None = None) -> dict:
    return assess(facts, counted_sites=counted if counted is not None else {"primary": False, "offsite": True},
                  rpo_seconds=900, rpo="15m", recovery_key_on_host=key)


HEALTHY = {"reachable": True, "backlog_objects": 0, "oldest_owed_age_seconds": 0.0, "dead_letters": 0,
           "started": True}


def test_one_copy_on_one_host_is_unprotected_whatever_else_is_fine() -> None:
    verdict = _judge(_facts(), counted={"primary": False})
    assert verdict["state"] == "unprotected"
    codes = {r["code"]: r for r in verdict["reasons"]}
    assert set(codes) == {"policy-unmet:copies", "policy-unmet:offsite"}
    assert "every image (10) has 1 copy" in codes["policy-unmet:copies"]["text"]
    assert "sites add" in codes["policy-unmet:copies"]["text"]
    assert headline(verdict) == "UNPROTECTED: 2 reasons"


def test_a_healthy_offsite_copy_is_protected() -> None:
    verdict = _judge(_facts(offsite=HEALTHY))
    assert verdict == {"state": "protected", "reasons": []} and headline(verdict) == "PROTECTED"


@pytest.mark.parametrize(("change", "code"), [
    ({"reachable": False, "site_error": "No such directory"}, "site-down:offsite"),
    ({"backlog_objects": 3, "oldest_owed_age_seconds": 901.0}, "backlog-over-rpo:offsite"),
    ({"dead_letters": 2}, "dead-letters:offsite"),
    ({"started": False, "backlog_objects": 7}, "site-not-started:offsite"),
])
def test_a_lapse_on_a_site_puts_the_archive_at_risk(change: dict, code: str) -> None:
    verdict = _judge(_facts(offsite={**HEALTHY, **change}))
    assert verdict["state"] == "at risk" and [r["code"] for r in verdict["reasons"]] == [code], verdict
    assert verdict["reasons"][0]["severity"] == "at risk" and "offsite" in verdict["reasons"][0]["text"]


def test_a_backlog_within_the_rpo_is_still_protected() -> None:
    assert _judge(_facts(offsite={**HEALTHY, "backlog_objects": 3, "oldest_owed_age_seconds": 899.0}))["state"] \
        == "protected"


def test_proof_and_keys_lapses_are_at_risk() -> None:
    facts = _facts(offsite=HEALTHY)
    facts["scrub"]["sites"] = {"offsite": {"overdue": 4}}
    facts["scrub"]["quarantined"] = {"primary": {"since": 1.0, "reason": "damaged"}}
    facts["drills"]["sites"] = {"primary": {"last_run": {"state": "failure"}}, "offsite": {"overdue": True}}
    facts["snapshots"]["enabled"] = False
    verdict = _judge(facts, key="/data/recovery-key.pem")
    assert verdict["state"] == "at risk"
    assert [r["code"] for r in verdict["reasons"]] == [
        "site-quarantined:primary", "scrub-overdue:offsite", "drill-failed:primary", "drill-overdue:offsite",
        "snapshots-disabled", "recovery-key-on-host"]
    assert "/data/recovery-key.pem" in verdict["reasons"][-1]["text"]


# --- a real archive ---------------------------------------------------------------------------

def _readyz(vault: Vault) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{vault.http_port}/readyz", timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _state(vault: Vault) -> tuple[int, dict, str]:
    text = vault.cli("status", check=False)
    report = json.loads(vault.cli("status", "--json", check=False).stdout)
    return text.returncode, report, " ".join(text.stdout.split())  # rich wraps lines at 80 columns


def test_readiness_of_a_real_archive(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    images = make_instances(ct_small, tmp_path / "in", 4)
    vault.cli("import", str(images[0].parent))

    # Images stored, no second site: today's bug said "OK".
    code, report, text = _state(vault)
    assert code == 2 and report["ok"] is False, text
    assert report["protection"]["state"] == "unprotected"
    assert text.startswith("UNPROTECTED: policy-unmet:copies; policy-unmet:offsite"), text
    assert "every image (4) has 1 copy" in text

    # An off-site site, the recovery key moved offline: protected once copied.
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    added = vault.cli("sites", "add", "offsite", f"file://{offsite}")
    assert "4 existing object(s) owed" in added.stdout, added.stdout
    shutil.move(vault.root / "recovery-key.pem", tmp_path / "offline-recovery-key.pem")
    vault.start()
    wait_until(lambda: _state(vault)[0] == 0, timeout=30, what="protected")
    code, report, text = _state(vault)
    assert report["protection"] == {"state": "protected", "reasons": []} and text.startswith("PROTECTED")
    assert _readyz(vault) == (200, {"state": "protected", "reasons": []})

    # A NAS added while serve runs: owed the existing objects, shown NOT STARTED, never "0 s behind".
    nas = tmp_path / "nas"
    nas.mkdir()
    added = vault.cli("sites", "add", "nas", f"file://{nas}", "--onsite")
    assert "RESTART" in added.stdout, added.stdout
    code, report, text = _state(vault)
    entry = report["sites"]["nas"]
    assert code == 1 and entry["started"] is False and entry["backlog_objects"] == 4, entry
    assert entry["oldest_owed_age_seconds"] > 0 and "NOT STARTED" in text
    assert "site-not-started:nas" in [r["code"] for r in report["protection"]["reasons"]]
    assert vault.api("/api/status")["sites"]["nas"]["started"] is False  # the running serve says so too
    wait_until(lambda: {"code": "site-not-started:nas", "severity": "at risk"} in _readyz(vault)[1]["reasons"],
               timeout=30, what="/readyz naming the site not started")
    vault.stop()
    vault.start()
    wait_until(lambda: _state(vault)[0] == 0, timeout=30, what="protected with the NAS copied")
    assert any(path.is_file() for path in (nas / "objects").rglob("*"))  # the NAS now holds copies

    # The off-site directory replaced by a file: the next copy fails, the site is down.
    shutil.move(offsite, tmp_path / "offsite-away")
    offsite.write_text("not a directory")
    send(vault, make_instances(ct_small, tmp_path / "more", 1)[0].parent)
    wait_until(lambda: "site-down:offsite" in [r["code"] for r in _state(vault)[1]["protection"]["reasons"]],
               timeout=30, what="the off-site site reported down")
    code, report, text = _state(vault)
    assert code == 1 and report["protection"]["state"] == "at risk" and text.startswith("AT RISK:"), text
    wait_until(lambda: _readyz(vault)[0] == 503, timeout=30, what="/readyz 503")  # it judges at most every 5 s
    status, body = _readyz(vault)
    assert status == 503 and body["state"] == "at risk"
    assert {"code": "site-down:offsite", "severity": "at risk"} in body["reasons"]
    assert all(set(r) == {"code", "severity"} for r in body["reasons"])  # no text, no paths, no PHI
    vault.stop()
    assert "Traceback" not in vault.log()


def test_readyz_of_a_fresh_archive_is_503_unprotected_and_healthz_stays_200(running_vault: Vault) -> None:
    status, body = _readyz(running_vault)
    assert status == 503 and body["state"] == "unprotected", body
    assert [r["code"] for r in body["reasons"]][:2] == ["policy-unmet:copies", "policy-unmet:offsite"]
    with urllib.request.urlopen(f"http://127.0.0.1:{running_vault.http_port}/healthz", timeout=30) as answer:
        assert answer.status == 200 and json.loads(answer.read())["status"] == "ok"  # the process is up
    api = running_vault.api("/api/status")["protection"]  # with a token: the reasons' text too
    assert api["state"] == "unprotected" and all(r["text"] for r in api["reasons"])


@pytest.mark.parametrize("value", ['"soon"', '"0m"', '"-5m"', "15", '""'])
def test_bad_rpo_is_refused_with_the_key(vault: Vault, value: str) -> None:
    vault.set_config("policy", "rpo", value)
    before = vault.config.read_text()
    proc = vault.cli("status", check=False)
    assert proc.returncode == 3 and "[policy] rpo" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and vault.config.read_text() == before
