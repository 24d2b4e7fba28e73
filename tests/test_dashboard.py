"""The web dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) against a real ``dicomvault serve``: login, the first screen's numbers against
``status --json``, an alert while a replica site is unreachable (a real tmpfs remounted
read-only) that clears when it returns, a study's copies, logout. Screenshots are kept under
the pytest tmp dir (the path is printed)."""

from __future__ import annotations

import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import Vault, api_call, make_vault, tmpfs_mounted, wait_until
from test_replication_file import make_instances, send

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"\ndashboard screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium through chromedriver (both from Debian, no download)."""
    if not CHROMIUM.exists() or not DRIVER.exists():
        pytest.fail("chromium / chromium-driver missing: run scripts/test, which installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real tmpfs for the replica, so the site can be made unusable under the running server."""
    with tmpfs_mounted(tmp_path_factory.mktemp("replica-mnt"), "100m") as mountpoint:
        yield mountpoint


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, site: Path, ct_small: Path) -> Iterator[dict]:
    """A running vault with a file replica "nas" on the tmpfs and one 6-instance study, copied."""
    root = tmp_path_factory.mktemp("dashboard")
    vault = make_vault(root / "vault")
    vault.cli("sites", "add", "nas", f"file://{site}/replica", "--onsite")
    vault.start()
    files = make_instances(ct_small, root / "in", 6)
    send(vault, root / "in")
    vault.wait_settled()
    wait_until(lambda: vault.status()["sites"]["nas"]["verified_objects"] == 6, timeout=60, what="6 copies on nas")
    try:
        yield {"vault": vault, "root": root, "study": str(pydicom.dcmread(files[0]).StudyInstanceUID)}
    finally:
        vault.stop()


def url(vault: Vault, path: str = "/") -> str:
    return f"http://127.0.0.1:{vault.http_port}{path}"


def plain_get(vault: Vault, path: str, headers: dict | None = None) -> tuple[int, str, str]:
    """(status, Location, body) of a GET that does not follow redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url(vault, path), headers=headers or {}), timeout=10) as answer:
            return answer.status, answer.headers.get("location", ""), answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers.get("location", ""), refused.read().decode()


def log_in(browser, vault: Vault, token: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(url(vault, "/login"))
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait_until(lambda: not browser.current_url.endswith("/login") or browser.find_elements(By.ID, "login-error"),
               timeout=10, what="the answer to the login form")


def audit_rows(vault: Vault, action: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT actor, subject, outcome FROM audit_log WHERE action = ? ORDER BY id", (action,)).fetchall()


def test_without_a_session_nothing_is_shown(dash: dict, browser) -> None:  # type: ignore[no-untyped-def]
    vault: Vault = dash["vault"]
    browser.delete_all_cookies()
    browser.get(url(vault, "/"))
    assert browser.current_url == url(vault, "/login")
    assert "instances" not in browser.page_source and dash["study"] not in browser.page_source
    for path in ("/", f"/study/{dash['study']}"):
        status, location, body = plain_get(vault, path)
        assert (status, location) == (303, "/login") and "instances" not in body
    status, _, body = plain_get(vault, "/", {"Authorization": "Bearer not-a-token-of-this-vault"})
    assert status == 401 and "instances" not in body


def test_a_wrong_token_is_refused_and_audited(dash: dict, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    vault: Vault = dash["vault"]
    browser.delete_all_cookies()
    log_in(browser, vault, "wrong-token-wrong-token-wrong")
    assert browser.current_url == url(vault, "/login")
    assert "not valid" in browser.find_element(By.ID, "login-error").text
    browser.save_screenshot(str(shots / "login-refused.png"))
    failures = [r for r in audit_rows(vault, "login") if r[2] == "failure"]
    assert failures and failures[-1][0].startswith("dashboard:127.0.0.1")


def test_login_and_the_first_screen_matches_status(dash: dict, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    vault: Vault = dash["vault"]
    browser.delete_all_cookies()
    log_in(browser, vault, vault.api_token())
    assert browser.current_url == url(vault, "/")
    cookie = browser.get_cookie("dicomvault_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    status = vault.status()
    browser.get(url(vault, "/?fresh=1"))  # figures gathered now, not the few seconds old ones
    value = lambda element_id: browser.find_element(By.ID, element_id).get_attribute("data-value")
    assert int(value("instances")) == status["counts"]["instances"] == 6
    assert int(value("studies")) == status["counts"]["studies"] == 1
    for name, entry in status["sites"].items():
        row = browser.find_element(By.CSS_SELECTOR, f'#sites tr[data-site="{name}"]')
        backlog = int(row.find_element(By.CSS_SELECTOR, "td.backlog").get_attribute("data-value"))
        assert backlog == entry.get("backlog_objects", 0)
    expected = status["protection"]["state"] if "protection" in status else ("protected" if status["ok"] else "at risk")
    assert browser.find_element(By.ID, "protection-state").text == expected
    assert int(browser.find_element(By.ID, "ingest-24h").get_attribute("data-total")) == 6
    browser.save_screenshot(str(shots / "first-screen.png"))


def test_an_unreachable_site_raises_an_alert_that_clears(dash: dict, browser, site: Path, shots: Path,
                                                        ct_small: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    vault: Vault = dash["vault"]
    if browser.get_cookie("dicomvault_session") is None:
        log_in(browser, vault, vault.api_token())

    def alert_text() -> str:
        browser.get(url(vault, "/"))
        return browser.find_element(By.ID, "alerts").text

    assert "nas is unreachable" not in alert_text()
    subprocess.run(["mount", "-o", "remount,ro", str(site)], check=True)
    try:
        make_instances(ct_small, dash["root"] / "during", 2)
        send(vault, dash["root"] / "during")  # the copies owed to nas now fail
        wait_until(lambda: "nas is unreachable" in alert_text(), timeout=60, interval=0.5, what="the alert on the page")
        row = browser.find_element(By.CSS_SELECTOR, '#sites tr[data-site="nas"]')
        assert "DOWN" in row.find_element(By.CSS_SELECTOR, "td.reachable").text
        assert browser.find_element(By.ID, "protection-state").text != "protected"
        browser.save_screenshot(str(shots / "site-down.png"))
        # the alert serve raised (jobs/alerts) is acknowledged from the page: no more reminders
        (item,) = [li for li in browser.find_elements(By.CSS_SELECTOR, "#alerts li") if "nas is unreachable" in li.text]
        item.find_element(By.CSS_SELECTOR, "form button, form input[type=submit]").click()
        wait_until(lambda: "acknowledged by" in alert_text(), timeout=30, interval=0.5, what="the acknowledgement")
        status, listed = api_call(vault, "/api/alerts", vault.api_token())
        assert status == 200 and [a for a in listed["alerts"] if a["acknowledged_by"]], "the API agrees"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(site)], check=True)
    wait_until(lambda: "nas is unreachable" not in alert_text(), timeout=90, interval=0.5, what="the alert to clear")
    row = browser.find_element(By.CSS_SELECTOR, '#sites tr[data-site="nas"]')
    assert row.find_element(By.CSS_SELECTOR, "td.reachable").text == "up"
    browser.save_screenshot(str(shots / "site-back.png"))


def test_the_study_page_shows_where_the_copies_are(dash: dict, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    vault: Vault = dash["vault"]
    if browser.get_cookie("dicomvault_session") is None:
        log_in(browser, vault, vault.api_token())
    uid = dash["study"]
    browser.get(url(vault, f"/study/{uid}"))
    assert browser.find_element(By.ID, "instance-count").text == "6"
    assert browser.find_element(By.ID, "series-count").text == "1"
    copies = {(r.get_attribute("data-site"), r.get_attribute("data-state")): int(r.find_element(By.CSS_SELECTOR,
              "td.copies").text) for r in browser.find_elements(By.CSS_SELECTOR, "#copies tbody tr")}
    assert copies == {("primary", "verified"): 6, ("nas", "verified"): 6}, copies
    assert browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr"), "the study's audit trail is empty"
    browser.save_screenshot(str(shots / "study.png"))
    assert any(subject == uid and actor.startswith("dashboard:admin@") for actor, subject, _ in audit_rows(vault, "read"))
    browser.get(url(vault, "/study/not-a-uid"))
    assert "is not a UID" in browser.page_source


def test_logout_ends_the_session(dash: dict, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    vault: Vault = dash["vault"]
    if browser.get_cookie("dicomvault_session") is None:
        log_in(browser, vault, vault.api_token())
    browser.get(url(vault, "/"))
    cookie = browser.get_cookie("dicomvault_session")["value"]
    jar = {"Cookie": f"dicomvault_session={cookie}"}
    assert plain_get(vault, "/", jar)[0] == 200
    forged = urllib.request.Request(url(vault, "/logout"), data=b"csrf=guess", headers=jar, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 400, "a POST without the session's CSRF token must be refused"
    browser.find_element(By.ID, "logout").click()
    wait_until(lambda: browser.current_url == url(vault, "/login"), timeout=10, what="the login page after logout")
    browser.get(url(vault, "/"))
    assert browser.current_url == url(vault, "/login")
    status, location, _ = plain_get(vault, "/", jar)
    assert (status, location) == (303, "/login"), "the old cookie must not work after logout"
    assert any(r[2] == "success" for r in audit_rows(vault, "logout"))


def test_figures_are_reused_briefly_then_gathered_again() -> None:
    """serve/dashboard/figures.py: young figures are shown as they are, older ones while one
    background gathering runs, and ``force`` (``/?fresh=1``) always gathers."""
    import threading

    from dicomvault.serve.dashboard.figures import Figures

    calls: list[int] = []
    release = threading.Event()

    def gather() -> dict:
        calls.append(len(calls))
        if len(calls) == 2:
            release.wait(10)  # the background gathering: held until the test lets it finish
        return {"n": len(calls)}

    figures = Figures(gather, fresh=0.2, stale=30)
    assert figures.get()[0] == {"n": 1} and figures.get()[0] == {"n": 1} and len(calls) == 1
    wait_until(lambda: figures.get()[1] >= 0.2, timeout=5, what="the figures to age")
    wait_until(lambda: len(calls) == 2, timeout=5, what="one background gathering")
    assert figures.get()[0] == {"n": 1}, "stale figures are shown while new ones are gathered"
    assert len(calls) == 2, "only one gathering at a time"
    release.set()
    wait_until(lambda: figures.get()[0] == {"n": 2}, timeout=5, what="the new figures")
    assert figures.get(force=True)[0] == {"n": 3}


def test_roles_and_removed_tokens(dash: dict) -> None:
    """A store-only token cannot log in; a read token can but may not acknowledge; removing the
    token's line ends its session at once (no browser needed: the same HTTP a browser sends)."""
    import http.cookiejar
    import re
    import secrets
    import urllib.parse

    vault: Vault = dash["vault"]
    tokens = vault.root / "keys" / "api-tokens"
    reader, sender = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    original = tokens.read_text()
    tokens.write_text(original + f"wall:{reader}:read\nscanner:{sender}:store\n")
    try:
        def session(token: str) -> tuple[urllib.request.OpenerDirector, int]:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            form = opener.open(url(vault, "/login"), timeout=10).read().decode()
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
            try:
                answer = opener.open(url(vault, "/login"), timeout=30,
                                     data=urllib.parse.urlencode({"token": token, "csrf": csrf}).encode())
                return opener, answer.status
            except urllib.error.HTTPError as refused:
                assert "read or above" in refused.read().decode()
                return opener, refused.code

        assert session(sender)[1] == 403
        wall, code = session(reader)
        assert code == 200 and b'id="instances"' in wall.open(url(vault, "/"), timeout=30).read()
        page = wall.open(url(vault, "/"), timeout=30).read().decode()
        assert "Acknowledge" not in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            wall.open(url(vault, "/alerts/1/ack"), data=f"csrf={csrf}".encode(), timeout=10)
        assert refused.value.code == 403, "acknowledging needs operator"
        tokens.write_text(original + f"scanner:{sender}:store\n")
        assert wall.open(url(vault, "/"), timeout=10).geturl() == url(vault, "/login"), \
            "a session must end when its token's line is removed"
    finally:
        tokens.write_text(original)


def test_a_running_restore_shows_progress_and_eta(dash: dict) -> None:
    """The first screen's restore rows, from a job in the shape jobs/restore/plan.job_progress gives."""
    from dicomvault.serve.dashboard import pages, sources

    status = dash["vault"].status()
    status["restores"] = [{"id": 7, "kind": "restore", "peer": "PACS", "destination": None, "state": "running",
                           "percent": 42.5, "sent": 17, "total": 40, "eta_seconds": 125.0, "megabytes_per_second": 12.0},
                          {"id": 6, "kind": "restore", "peer": "PACS", "destination": None, "state": "completed",
                           "percent": 100.0, "sent": 3, "total": 3, "eta_seconds": None, "megabytes_per_second": 8.0}]
    history = {r: {"range": r, "bucket_seconds": 3600, "points": []} for r in sources.RANGES}
    rto = {"last_24h": {"studies": 2, "instances": 8, "bytes": 24_000_000, "seconds": 2.0,
                        "rate_bytes_per_second": 12e6, "basis": "restore job 7"}}
    html = pages.first_screen(status, sources.protection(status), [], history, {"sites": []}, rto, age=0.0,
                              may_ack=False, csrf="")
    assert 'value="42.5"' in html and "17/40" in html and "2 min" in html, "progress and ETA of the running job"
    assert "3/3" not in html, "a finished job is not a running restore"
    assert "2 studies, 8 instances, 24.0 MB" in html and "about 2 s" in html
