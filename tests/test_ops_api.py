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

from conftest import Vault, api_call, make_vault
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


def _post(vault: Vault, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    return api_call(vault, path, token, body or {"to": "nowhere"})


def test_only_operator_tokens_may_act(running_vault: Vault) -> None:
    """A dashboard's token reads; starting or stopping a restore needs the operator role (or admin)."""
    tokens = running_vault.root / "keys" / "api-tokens"
    assert tokens.read_text().splitlines()[-1].endswith(":admin")  # init's token has the admin role
    reader, viewer, modality, ops = "r" * 32, "v" * 32, "m" * 32, "o" * 32
    with tokens.open("a") as handle:
        handle.write(f"dashboard:{reader}\nviewer:{viewer}:read\nmodality:{modality}:store\nops:{ops}:operator\n")

    for path in ("/api/restores", "/api/restores/1/stop"):
        for name, token in (("dashboard", reader), ("viewer", viewer), ("modality", modality)):
            code, body = _post(running_vault, path, token)
            assert code == 403 and body["needed"] == "operator" and f"token {name!r}" in body["error"], body
    assert running_vault.api("/api/restores", token=reader) == {"jobs": []}  # reading is fine
    assert running_vault.api("/api/restores", token=ops) == {"jobs": []}  # operator implies read
    with pytest.raises(urllib.error.HTTPError) as no_read:  # store is STOW-RS only
        running_vault.api("/api/status", token=modality)
    assert no_read.value.code == 403 and "needs 'read'" in json.loads(no_read.value.read())["error"]
    for token in (ops, running_vault.api_token()):  # operator and admin get past the gate to the request check
        code, body = _post(running_vault, "/api/restores", token)
        assert code == 400 and "not a configured DICOM peer" in body["error"]
    forbidden = audit_rows(running_vault, "api", "api:dashboard@")
    assert [(row["subject"], row["outcome"], row["detail"]["needed"]) for row in forbidden] == [
        ("/api/restores", "forbidden", "operator"), ("/api/restores/1/stop", "forbidden", "operator")]
    _post(running_vault, "/api/restores", reader)  # the same refusal again within the minute: no new row
    assert len(audit_rows(running_vault, "api", "api:dashboard@")) == 2


def test_old_token_lines_keep_their_meaning(vault: Vault) -> None:
    """A tokens file written before roles: name:token lines read, and act when named in api_operators."""
    tokens = vault.root / "keys" / "api-tokens"
    old_admin, dashboard = "a" * 40, "d" * 40
    tokens.write_text(f"# name:token lines\nchief:{old_admin}\ndashboard:{dashboard}\n")
    vault.set_config("http", "api_operators", '["chief"]')
    vault.start()
    assert vault.api("/api/restores", token=dashboard) == {"jobs": []}
    assert _post(vault, "/api/restores", dashboard)[0] == 403
    code, body = _post(vault, "/api/restores", old_admin)
    assert code == 400 and "not a configured DICOM peer" in body["error"]
    from dicomvault.serve.api_client import operator_token  # `restore --in-server` finds the operator's token

    assert operator_token(str(tokens), ("chief",)) == old_admin


def test_a_line_with_an_unknown_role_is_ignored_and_logged(running_vault: Vault) -> None:
    tokens = running_vault.root / "keys" / "api-tokens"
    typo = "t" * 32
    with tokens.open("a") as handle:
        handle.write(f"typo:{typo}:reed\n")
    code, _headers, body = _get(running_vault, "/api/status", {"Authorization": f"Bearer {typo}"})
    assert code == 401, body
    assert "unknown role(s) reed" in running_vault.log()
    assert running_vault.api("/api/status")["counts"]["instances"] == 0  # the other lines still load


def test_bad_job_ids_and_waits_are_404_and_400_never_500(running_vault: Vault) -> None:
    token = {"Authorization": f"Bearer {running_vault.api_token()}"}
    for job in ("99999999999999999999999", str(2**63), "0", "-1", "1e40", "%C2%B2", "%D9%A3", "abc", "1.5"):
        code, _headers, body = _get(running_vault, f"/api/restores/{job}", token)
        assert code == 404 and "no restore job" in body["error"], (job, code, body)
        code, body = _post(running_vault, f"/api/restores/{job}/stop", running_vault.api_token())
        assert code == 404, (job, code, body)
    for wait in ("1e40", "nan", "inf", "-1", "%C2%B2", "soon", "9" * 400):
        code, _headers, body = _get(running_vault, f"/api/restores/1?wait={wait}", token)
        assert code == 400 and "wait=" in body["error"], (wait, code, body)
    assert _get(running_vault, "/api/restores/1?wait=0.1", token)[0] == 404  # a good wait on a missing job
    for resume in (10**23, 2**63, 0, -5):
        code, body = _post(running_vault, "/api/restores", running_vault.api_token(), {"resume": resume})
        assert code == 400 and "no restore job" in body["error"], (resume, code, body)
    assert "Traceback" not in running_vault.log()


def test_api_operators_must_be_a_list(vault: Vault) -> None:
    vault.set_config("http", "api_operators", '"admin"')
    proc = vault.cli("status", check=False)
    assert proc.returncode != 0 and "[http] api_operators must be a list" in proc.stderr
