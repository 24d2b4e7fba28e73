"""The operations API (/api): nobody reads job reports or status without a bearer token."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from conftest import Vault, make_vault
from test_dicomweb import audit_rows


def _get(vault: Vault, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{vault.http_port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), json.loads(refused.read())


def test_init_writes_a_private_admin_token(tmp_path) -> None:
    vault = make_vault(tmp_path / "v")
    tokens = vault.root / "keys" / "api-tokens"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert len(vault.api_token()) >= 40
    before = tokens.read_bytes()
    again = subprocess.run([sys.executable, "-m", "dicomvault.cli", "init", "--dir", str(vault.root), "--force"],
                           capture_output=True, text=True)  # the config is rewritten, the tokens are kept
    assert again.returncode == 0 and tokens.read_bytes() == before


def test_every_api_path_wants_a_valid_bearer_token_and_reads_are_audited(running_vault: Vault) -> None:
    vault = running_vault
    paths = ("/api/status", "/api/restores", "/api/restores/1", "/api/drills")
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Authorization": f"Basic {vault.api_token()}"},
                        {"Authorization": "Bearer"}):
            code, answer_headers, body = _get(vault, path, headers)
            assert code == 401, (path, headers, body)
            assert answer_headers["www-authenticate"].startswith("Bearer") and "bearer token" in body["error"]
    # Liveness and metrics carry no patient data: a load balancer and Prometheus need no token.
    assert _get(vault, "/healthz")[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{vault.http_port}/metrics", timeout=10) as answer:
        assert answer.status == 200
    assert vault.api("/api/status")["counts"]["instances"] == 0
    assert vault.api("/api/restores") == {"jobs": []}
    assert "sites" in vault.api("/api/status")  # a second read inside the minute: one audit row
    denied = audit_rows(vault, "login", "api:")
    assert len(denied) == 1 and denied[0]["actor"] == "api:127.0.0.1" and denied[0]["outcome"] == "failure"
    reads = [(row["actor"], row["subject"]) for row in audit_rows(vault, "read", "api:")]
    assert reads == [("api:admin@127.0.0.1", "/api/status"), ("api:admin@127.0.0.1", "/api/restores")]
    assert vault.cli("audit", "verify").returncode == 0


def test_a_second_token_added_while_serving_is_used_at_once(running_vault: Vault) -> None:
    tokens = running_vault.root / "keys" / "api-tokens"
    dashboard = "d" * 32
    with tokens.open("a") as handle:
        handle.write(f"dashboard:{dashboard}\n")
    assert running_vault.api("/api/restores", token=dashboard) == {"jobs": []}
    assert audit_rows(running_vault, "read", "api:dashboard@")[0]["subject"] == "/api/restores"


@pytest.mark.parametrize("fault", ["readable by others", "missing"])
def test_a_bad_tokens_file_refuses_everything_and_says_why(running_vault: Vault, fault: str) -> None:
    tokens = running_vault.root / "keys" / "api-tokens"
    token = running_vault.api_token()
    if fault == "missing":
        os.remove(tokens)
    else:
        tokens.chmod(0o644)
    code, _headers, body = _get(running_vault, "/api/status", {"Authorization": f"Bearer {token}"})
    assert code == 503 and "jobs" not in body and "counts" not in body
    assert ("chmod 600" if fault != "missing" else "does not exist") in body["error"], body


def test_an_empty_api_tokens_setting_is_a_config_error(vault: Vault) -> None:
    vault.set_config("http", "api_tokens_file", '""')
    proc = vault.cli("status", check=False)
    assert proc.returncode != 0 and "[http] api_tokens_file" in proc.stderr and "Traceback" not in proc.stderr


def test_only_operator_tokens_may_act(running_vault: Vault) -> None:
    """A dashboard's token reads; starting or stopping a restore needs a name in [http] api_operators."""
    tokens = running_vault.root / "keys" / "api-tokens"
    reader = "r" * 32
    with tokens.open("a") as handle:
        handle.write(f"dashboard:{reader}\n")

    def post(path: str, token: str) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{running_vault.http_port}{path}", method="POST",
                                         data=json.dumps({"to": "nowhere"}).encode(),
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    for path in ("/api/restores", "/api/restores/1/stop"):
        code, body = post(path, reader)
        assert code == 403 and "may read but not act" in body["error"], body
    assert running_vault.api("/api/restores", token=reader) == {"jobs": []}  # reading is fine
    code, body = post("/api/restores", running_vault.api_token())  # admin gets past the gate to the request check
    assert code == 400 and "not a configured DICOM peer" in body["error"]
    forbidden = audit_rows(running_vault, "api", "api:dashboard@")
    assert [(row["subject"], row["outcome"]) for row in forbidden] == [("/api/restores", "forbidden"),
                                                                       ("/api/restores/1/stop", "forbidden")]


def test_api_operators_must_be_a_list(vault: Vault) -> None:
    vault.set_config("http", "api_operators", '"admin"')
    proc = vault.cli("status", check=False)
    assert proc.returncode != 0 and "[http] api_operators must be a list" in proc.stderr
