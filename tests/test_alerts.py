"""Alerts that leave the building ([alerts], jobs/alerts/): a real `dicomvault serve` tells a
webhook (an HTTP receiver in this test, failing at first), an SMTP server (aiosmtpd, its own
process, STARTTLS required, with a certificate made here) and a real rsyslog (TLS with a client
certificate; UDP for `alerts test`) when a replica site goes down (a tmpfs remounted
read-only), reminds until acknowledged, and says when it is back. Plus: `alerts test`, bad [alerts] settings, the pure condition function, and the
Prometheus rules checked by promtool (Debian's prometheus package, installed by scripts/test).
"""

from __future__ import annotations

import json
import mailbox
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import Vault, api_call, free_port, remount, wait_until
from test_atna import Rsyslog, make_pki
from test_replication_file import make_instances, send

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dicomvault.json"
SITE_KEY = "site-down:nas"  # the protection reason (archive/readiness.py); its status line is no second alert


# --- receivers -----------------------------------------------------------------------------------

class Webhook:
    """An HTTP receiver on loopback: answers 500 to the first ``fail_first`` POSTs, then 200,
    and keeps (status answered, JSON body, Authorization header) of every request."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[int, dict, str]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = 500 if len(receiver.requests) < receiver.fail_first else 200
                receiver.requests.append((code, body, self.headers.get("Authorization", "")))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self, kind: str, key: str = SITE_KEY) -> list[dict]:
        return [body for code, body, _ in self.requests if code == 200 and body["kind"] == kind and body["key"] == key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Smtp:
    """aiosmtpd in its own process on loopback, STARTTLS required, mail kept in a Maildir."""

    def __init__(self, directory: Path, cert: Path, key: Path) -> None:
        self.port = free_port()
        self.maildir = directory / "maildir"
        directory.mkdir(parents=True, exist_ok=True)
        log = open(directory / "aiosmtpd.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}", "--tlscert", str(cert),
             "--tlskey", str(key), "-c", "aiosmtpd.handlers.Mailbox", str(self.maildir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def listening() -> bool:
            assert self.process.poll() is None, (directory / "aiosmtpd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, timeout=20, what="aiosmtpd listening")

    def subjects(self) -> list[str]:
        if not self.maildir.exists():
            return []
        return [" ".join(str(message["Subject"]).split()) for message in mailbox.Maildir(self.maildir, create=False)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


def syslog_lines(rsyslog: Rsyslog) -> list[str]:
    return [line for line in (rsyslog.out.read_text(encoding="utf-8").splitlines() if rsyslog.out.exists() else [])
            if "dicomvault-alert" in line]


def count(lines: list[str], kind: str, text: str = "site nas is unreachable") -> int:
    return sum(1 for line in lines if f"{kind} (" in line and text in line)


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[Webhook, Smtp, Rsyslog, object]]:
    pki = make_pki(tmp_path / "pki")
    webhook = Webhook(fail_first=2)
    smtp = Smtp(tmp_path / "smtp", pki.server, pki.server_key)
    rsyslog = Rsyslog(tmp_path / "rsyslog", pki)
    rsyslog.start()
    yield webhook, smtp, rsyslog, pki
    webhook.close()
    smtp.stop()
    rsyslog.stop()


def configure(vault: Vault, webhook: Webhook, smtp: Smtp, rsyslog: Rsyslog, pki: object) -> None:
    for key, value in (("check_every", '"1s"'), ("remind_every", '"3s"'), ("webhook_url", json.dumps(webhook.url)),
                       ("webhook_token", '"hook-secret"'), ("smtp_host", '"127.0.0.1"'),
                       ("smtp_port", str(smtp.port)), ("smtp_ca_file", json.dumps(str(pki.ca))),  # type: ignore[attr-defined]
                       ("mail_from", '"dicomvault@hospital.test"'), ("mail_to", '["pacs-admin@hospital.test"]'),
                       ("syslog", json.dumps(f"tls://127.0.0.1:{rsyslog.tls_port}")),
                       ("syslog_ca_file", json.dumps(str(pki.ca))),  # type: ignore[attr-defined]
                       ("syslog_cert_file", json.dumps(str(pki.client))),  # type: ignore[attr-defined]
                       ("syslog_key_file", json.dumps(str(pki.client_key)))):  # type: ignore[attr-defined]
        vault.set_config("alerts", key, value)


def metrics(vault: Vault) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{vault.http_port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def last_check(vault: Vault) -> float:
    found = re.search(r"^dicomvault_alert_engine_last_check_timestamp (\S+)$", metrics(vault), re.M)
    return float(found.group(1)) if found else 0.0


# --- the whole life of an alert against a real serve ----------------------------------------------

def test_site_outage_alert_reaches_every_channel_reminds_acks_and_resolves(
        vault: Vault, receivers: tuple, tmpfs: Path, ct_small: Path, tmp_path: Path) -> None:
    webhook, smtp, rsyslog, pki = receivers
    vault.cli("sites", "add", "nas", f"file://{tmpfs}/replica", "--onsite")
    configure(vault, webhook, smtp, rsyslog, pki)
    vault.start()
    make_instances(ct_small, tmp_path / "first", 1)
    send(vault, tmp_path / "first")
    wait_until(lambda: vault.status()["sites"]["nas"]["verified_objects"] == 1, timeout=60, what="first copy")
    assert not webhook.delivered("raised") and count(syslog_lines(rsyslog), "ALERT") == 0

    remount(tmpfs, "ro")  # the site goes down; the next copy finds out
    make_instances(ct_small, tmp_path / "during", 1)
    send(vault, tmp_path / "during")
    wait_until(lambda: webhook.delivered("raised") and count(smtp.subjects(), "ALERT")
               and count(syslog_lines(rsyslog), "ALERT"), timeout=60, what="the raised alert on every channel")
    # The webhook failed twice at first (HTTP 500) and was retried until delivered.
    assert [code for code, _, _ in webhook.requests[:3]] == [500, 500, 200]
    raised = webhook.delivered("raised")[0]
    assert raised["severity"] == "at risk" and raised["text"].startswith("site nas is unreachable"), raised
    assert all(auth == "Bearer hook-secret" for _, _, auth in webhook.requests)
    assert f'dicomvault_alert_active{{key="{SITE_KEY}",severity="at risk"}} 1.0' in metrics(vault)

    # It stays: a reminder after remind_every ("3s") on every channel, still one "raised" each.
    wait_until(lambda: webhook.delivered("reminder") and count(smtp.subjects(), "REMINDER")
               and count(syslog_lines(rsyslog), "REMINDER"), timeout=30, what="a reminder on every channel")
    assert len(webhook.delivered("raised")) == 1
    assert count(smtp.subjects(), "ALERT") == 1 and count(syslog_lines(rsyslog), "ALERT") == 1

    # Acknowledged (operator API): no more reminders, however many checks pass.
    token = vault.api_token()
    code, listed = api_call(vault, "/api/alerts", token)
    assert code == 200
    mine = [a for a in listed["alerts"] if a["key"] == SITE_KEY]
    assert len(mine) == 1 and set(mine[0]) == {"id", "key", "severity", "text", "raised_at", "last_sent_at",
                                               "acknowledged_by", "acknowledged_at", "resolved_at"}
    code, acked = api_call(vault, f"/api/alerts/{mine[0]['id']}/ack", token, {"note": "on it"})
    assert code == 200 and acked["acknowledged_by"].startswith("api:admin@") and acked["acknowledged_at"], acked
    assert api_call(vault, "/api/alerts/999999/ack", token, {})[0] == 404
    acked_at = time.time()
    wait_until(lambda: last_check(vault) > acked_at + 1, timeout=30, what="a check after the acknowledgement")
    reminders = len(webhook.delivered("reminder"))  # a reminder sent while the ack was being made counts
    wait_until(lambda: last_check(vault) > acked_at + 3 + 2, timeout=30, what="checks past the reminder interval")
    assert len(webhook.delivered("reminder")) == reminders
    wait_until(lambda: count(smtp.subjects(), "REMINDER") == count(syslog_lines(rsyslog), "REMINDER") == reminders,
               timeout=10, what="no reminder after the acknowledgement on the other channels either")

    # The site comes back: one "resolved" notice per channel; the alert is closed in the API.
    remount(tmpfs, "rw")
    wait_until(lambda: webhook.delivered("resolved") and count(smtp.subjects(), "RESOLVED")
               and count(syslog_lines(rsyslog), "RESOLVED"), timeout=60, what="the resolved notice on every channel")
    assert len(webhook.delivered("resolved")) == 1
    assert not [a for a in api_call(vault, "/api/alerts", token)[1]["alerts"] if a["key"] == SITE_KEY]
    everything = api_call(vault, "/api/alerts?all=1", token)[1]["alerts"]
    closed = [a for a in everything if a["key"] == SITE_KEY]
    assert len(closed) == 1 and closed[0]["resolved_at"] and closed[0]["acknowledged_by"], closed
    assert f'key="{SITE_KEY}"' not in metrics(vault)

    # `alerts test` reaches all three.
    run = vault.cli("alerts", "test")
    assert run.stdout.split() == ["webhook:", "ok", "email:", "ok", "syslog:", "ok"], run.stdout
    wait_until(lambda: [b for _, b, _ in webhook.requests if b["kind"] == "test"] and count(smtp.subjects(), "TEST", "test alert")
               and count(syslog_lines(rsyslog), "TEST", "test alert"), timeout=20, what="the test alert everywhere")
    for key, value in (("syslog", json.dumps(f"udp://127.0.0.1:{rsyslog.udp_port}")), ("syslog_cert_file", '""'),
                       ("syslog_key_file", '""')):
        vault.set_config("alerts", key, value)
    assert vault.cli("alerts", "test").stdout.split()[-2:] == ["syslog:", "ok"]
    wait_until(lambda: count(syslog_lines(rsyslog), "TEST", "test alert") == 2, timeout=20, what="a test alert over UDP")
    listed_cli = json.loads(vault.cli("alerts", "list", "--all", "--json").stdout)["alerts"]
    assert [a["id"] for a in listed_cli if a["key"] == SITE_KEY] == [closed[0]["id"]]
    status = vault.status()
    assert status["alerting"]["channels"]["webhook"]["ok"] is True and status["audit"]["chain_ok"] is True
    vault.stop()
    actions = [row[0] for row in _audit(vault)]
    assert {"alert-raised", "alert-ack", "alert-resolved", "alert-test"} <= set(actions)


def _audit(vault: Vault) -> list[tuple[str, str]]:
    import sqlite3

    db = sqlite3.connect(vault.root / "catalog.sqlite3")
    try:
        return db.execute("SELECT action, outcome FROM audit_log WHERE action LIKE 'alert-%' ORDER BY id").fetchall()
    finally:
        db.close()


# --- without a serve ---------------------------------------------------------------------------------

def test_alerts_test_names_each_failing_channel_and_exits_non_zero(vault: Vault) -> None:
    dead = free_port()
    vault.set_config("alerts", "webhook_url", json.dumps(f"http://127.0.0.1:{dead}/hook"))
    run = vault.cli("alerts", "test", check=False)
    assert run.returncode == 1 and run.stdout.startswith("webhook: webhook http://127.0.0.1:"), run.stdout
    assert "Connection refused" in run.stdout
    assert _audit(vault) == [("alert-test", "failed")]


@pytest.mark.parametrize(("key", "value", "words"), [
    ("webhook_url", '"ftp://hooks.example/x"', "[alerts] webhook_url must be an http:// or https:// URL"),
    ("remind_every", '"soon"', "[alerts] remind_every: 'soon' is not a duration"),
    ("mail_to", '["oncall@hospital.test"]', "[alerts] mail_to is set but smtp_host is empty"),
    ("smtp_host", '"mail.hospital.test"', "mail_from and mail_to (a list of addresses) are needed too"),
    ("syslog", '"http://logs:514"', "[alerts] syslog must be \"udp://host:514\""),
    ("smtp_ca_file", '"missing-ca.pem"', "[alerts] smtp_ca_file: no such file"),
    ("syslog_cert_file", '"dicomvault.toml"', "needs both syslog_cert_file and syslog_key_file"),
])
def test_bad_alert_settings_are_refused_with_a_clear_message(vault: Vault, key: str, value: str, words: str) -> None:
    before = vault.config.read_text()
    vault.set_config("alerts", key, value)
    run = vault.cli("alerts", "list", check=False)
    assert run.returncode != 0 and words in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    vault.config.write_text(before)
    assert vault.cli("alerts", "list").stdout.strip() == "no open alerts"


def test_alert_conditions_take_protection_reasons_and_status_lines_with_stable_keys() -> None:
    from dicomvault.jobs.alerts.conditions import alert_conditions, protection_level

    status = {"protection": {"state": "unprotected", "reasons": [
        {"code": "no-offsite-site", "severity": "unprotected", "text": "no off-site copy: add one"}]},
        "alerts": ["site nas unreachable: [Errno 30] Read-only file system: '/mnt/x/1'",
                   "site nas: 3 copies dead-lettered; fix the cause"]}
    first = alert_conditions(status)
    assert [(c.key, c.severity) for c in first] == [("no-offsite-site", "unprotected"),
                                                    ("status:site-nas-unreachable", "at risk"),
                                                    ("status:site-nas-copies-dead-lettered", "at risk")]
    later = alert_conditions({"alerts": ["site nas unreachable: [Errno 5] Input/output error: '/mnt/x/77'",
                                         "site nas: 41 copies dead-lettered; fix the cause"]})
    assert [c.key for c in later] == ["status:site-nas-unreachable", "status:site-nas-copies-dead-lettered"]
    assert protection_level(status, first) == 2 and protection_level({}, later) == 1 and protection_level({}, []) == 0
    # one outage, one alert: the status lines a protection reason already reports are left out
    both = alert_conditions({"protection": {"state": "at risk", "reasons": [
        {"code": "site-down:nas", "severity": "at risk", "text": "site nas does not answer"},
        {"code": "dead-letters:nas", "severity": "at risk", "text": "3 copies to nas given up"}]},
        "alerts": [*status["alerts"], "site nasty unreachable: timeout"]})
    assert [c.key for c in both] == ["site-down:nas", "dead-letters:nas", "status:site-nasty-unreachable"]


# --- Prometheus and Grafana ------------------------------------------------------------------------

def test_prometheus_rules_pass_promtool_and_name_exported_metrics() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run scripts/test, which installs Debian's prometheus package"
    run = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
    rules_text = RULES.read_text()
    used = set(re.findall(r"\b(dicomvault_[a-z_]+)", rules_text))
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "dicomvault").rglob("*.py"))
    defined = set(re.findall(r"\"(dicomvault_[a-z_]+)\"", source))
    counters = {name for name in defined if re.search(rf"Counter\(\"{name}\"", source)}
    missing = {name for name in used if name not in defined and not any(
        name == f"{c}_total" for c in counters)}
    assert not missing, f"rules name metrics nobody exports: {sorted(missing)}"
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs and all(re.search(r"dicomvault_[a-z_]+", e) for e in exprs)
    assert "dicomvault_protection_state" in " ".join(exprs)


# --- the engine on its own: a failing channel, without a loop ----------------------------------------

class Recorder:
    """A channel that keeps what it was given, and fails while ``down`` is set."""

    def __init__(self, name: str) -> None:
        self.name, self.down, self.got = name, False, []

    def send(self, notice: dict) -> None:
        if self.down:
            raise ConnectionError(f"{self.name} receiver is down")
        self.got.append((notice["kind"], notice["key"]))


def test_a_failing_channel_is_retried_shown_in_status_and_never_alerts_about_itself(archive) -> None:
    from dicomvault.jobs.alerts.engine import AlertEngine, alerting_status
    from dicomvault.jobs.alerts.conditions import alert_conditions

    hook, mail = Recorder("webhook"), Recorder("email")
    lines = ["site nas unreachable: disk gone"]

    def status() -> dict:  # what archive_status() says, plus the channel lines it derives
        return {"alerts": lines + alerting_status(archive.catalog, archive.settings)["alerts"]}

    settings = archive.settings
    object.__setattr__(settings.alerts, "webhook_url", "http://127.0.0.1:9/unused")  # listed as configured
    object.__setattr__(settings.alerts, "smtp_host", "127.0.0.1")
    engine = AlertEngine(archive.catalog, settings, status, channels=[hook, mail])
    hook.down = True
    now = 1_000_000.0
    engine.check(now)
    assert mail.got == [("raised", "status:site-nas-unreachable")] and hook.got == []
    channel_state = alerting_status(archive.catalog, settings)
    assert channel_state["channels"]["webhook"]["ok"] is False and channel_state["channels"]["webhook"]["pending"] == 1
    assert [c.key for c in alert_conditions(status())] == ["status:site-nas-unreachable", "status:alert-channel-webhook-failing"]
    for step in range(1, 4):  # the webhook stays down: its own alert goes to e-mail only, once
        engine.check(now + step)
    assert mail.got == [("raised", "status:site-nas-unreachable"), ("raised", "status:alert-channel-webhook-failing")]
    assert hook.got == []
    hook.down = False  # back: the queued notice arrives; the channel alert resolves (told to e-mail only)
    engine.check(now + 5)
    engine.check(now + 6)
    assert hook.got == [("raised", "status:site-nas-unreachable")]
    assert mail.got[-1] == ("resolved", "status:alert-channel-webhook-failing")
    assert alerting_status(archive.catalog, settings)["channels"]["webhook"]["ok"] is True
    lines.clear()
    engine.check(now + 7)
    assert hook.got[-1] == mail.got[-1] == ("resolved", "status:site-nas-unreachable")


def test_cli_lists_and_acknowledges_and_refuses_what_cannot_be_acknowledged(vault: Vault) -> None:
    from dicomvault.archive.core import Archive
    from dicomvault.config import load_settings
    from dicomvault.jobs.alerts.engine import AlertEngine

    opened = Archive.open(load_settings(vault.config))
    try:
        lines = ["primary site has only 3 GiB free (2%)"]
        engine = AlertEngine(opened.catalog, opened.settings, lambda: {"alerts": list(lines)}, channels=[])
        engine.check(time.time())
    finally:
        opened.close()
    [alert] = json.loads(vault.cli("alerts", "list", "--json").stdout)["alerts"]
    assert alert["key"] == "status:primary-site-has-only-free" and alert["acknowledged_by"] is None
    run = vault.cli("alerts", "ack", str(alert["id"]), "--note", "disk ordered")
    assert f"alert #{alert['id']} acknowledged by cli:" in run.stdout
    [acked] = json.loads(vault.cli("alerts", "list", "--json").stdout)["alerts"]
    assert acked["acknowledged_by"].startswith("cli:") and acked["acknowledged_at"] >= acked["raised_at"]
    assert "acknowledged by cli:" in vault.cli("alerts", "list").stdout
    missing = vault.cli("alerts", "ack", "4242", check=False)
    assert missing.returncode == 1 and "there is no alert 4242" in missing.stderr
    assert [row for row in _audit(vault)] == [("alert-raised", "success"), ("alert-ack", "success")]


SMTP_WITH_LOGIN = """
import sys, ssl, threading
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult

port, cert, key, maildir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)

def check(server, session, envelope, mechanism, data):
    return AuthResult(success=(data.login, data.password) == (b"dicomvault", b"s3cret-mail"), handled=False)

controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, tls_context=context,
                        require_starttls=True, auth_required=True, auth_require_tls=True, authenticator=check)
controller.start()
print("ready", flush=True)
threading.Event().wait()
"""


def test_smtp_login_after_starttls(vault: Vault, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port, maildir = free_port(), tmp_path / "maildir"
    server = subprocess.Popen([sys.executable, "-c", SMTP_WITH_LOGIN, str(port), str(pki.server), str(pki.server_key),
                               str(maildir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        assert server.stdout is not None
        for line in iter(server.stdout.readline, ""):  # ends at "ready", or when the server exits
            if line.strip() == "ready":
                break
        else:
            raise AssertionError("the SMTP server exited before it was ready")
        for key, value in (("smtp_host", '"127.0.0.1"'), ("smtp_port", str(port)),
                           ("smtp_ca_file", json.dumps(str(pki.ca))), ("smtp_user", '"dicomvault"'),
                           ("smtp_password", '"wrong"'), ("mail_from", '"dicomvault@hospital.test"'),
                           ("mail_to", '["a@hospital.test", "b@hospital.test"]')):
            vault.set_config("alerts", key, value)
        refused = vault.cli("alerts", "test", check=False)
        assert refused.returncode == 1 and "SMTPAuthenticationError" in refused.stdout, refused.stdout
        vault.set_config("alerts", "smtp_password", '"s3cret-mail"')
        assert vault.cli("alerts", "test").stdout.strip() == "email: ok"
        [mail] = list(mailbox.Maildir(maildir, create=False))
        assert mail["To"] == "a@hospital.test, b@hospital.test" and "TEST (test)" in str(mail["Subject"])
        assert "if you read this, alerts reach you" in mail.get_payload()
    finally:
        server.terminate()
        server.wait(timeout=20)
