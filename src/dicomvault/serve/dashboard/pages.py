"""HTML of the dashboard's pages: plain server-side markup, charts as inline SVG, no scripts
from anywhere else (the page's own ``/dashboard/static`` files only). Every value is escaped."""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def size(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0.0, float(seconds))
    for limit, div, unit in ((90, 1, "s"), (5400, 60, "min"), (48 * 3600, 3600, "h")):
        if seconds < limit:
            return f"{seconds / div:.0f} {unit}"
    return f"{seconds / 86400:.1f} days"


def ago(ts: float | None, now: float) -> str:
    return "never" if not ts else f"{duration(now - ts)} ago"


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else ""


def page(title: str, body: str, user: str = "", csrf: str = "") -> str:
    logout = (f'<form method="post" action="/logout" class="logout"><span>{e(user)}</span>'
              f'<input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit" id="logout">Log out</button>'
              f'</form>') if user else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} - dicomvault</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head><body>'
            f'<header><a href="/" class="brand">dicomvault</a>{logout}</header><main>{body}</main>'
            f'<script src="/dashboard/static/dashboard.js"></script></body></html>')


def login_page(form_token: str, message: str = "") -> str:
    note = f'<p class="error" id="login-error">{e(message)}</p>' if message else ""
    return page("Log in", f"""<section class="login"><h1>Log in</h1>{note}
<form method="post" action="/login"><label for="token">API token (a line of keys/api-tokens; role read or above)</label>
<input type="password" id="token" name="token" autocomplete="off" autofocus required>
<input type="hidden" name="csrf" value="{e(form_token)}"><button type="submit" id="login">Log in</button></form></section>""")


def bar_chart(points: list[dict[str, Any]], bucket: int, label: str, chart_id: str) -> str:
    """Instances per bucket as an inline SVG bar chart (one bar per bucket, hover shows the value)."""
    width, height, pad = 600, 140, 24
    top = max((p["instances"] for p in points), default=0) or 1
    step = (width - pad) / max(len(points), 1)
    bars = []
    for i, p in enumerate(points):
        h = (height - pad) * p["instances"] / top
        stamp = time.strftime("%d %b %H:%M" if bucket < 86400 else "%d %b", time.gmtime(p["t"]))
        bars.append(f'<rect x="{pad + i * step + 1:.1f}" y="{height - pad - h:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{h:.1f}"><title>{e(stamp)}: {p["instances"]} instances, {e(size(p["bytes"]))}</title></rect>')
    total = sum(p["instances"] for p in points)
    first = time.strftime("%d %b %H:%M", time.gmtime(points[0]["t"])) if points else ""
    return (f'<figure class="chart" id="{e(chart_id)}" data-total="{total}"><figcaption>{e(label)}: {total} instances, '
            f'{e(size(sum(p["bytes"] for p in points)))}</figcaption>'
            f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{e(label)}">'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width}" y2="{height - pad}" class="axis"/>'
            f'<text x="{pad}" y="12" class="tick">{top}</text>'
            f'<text x="{pad}" y="{height - 6}" class="tick">{e(first)}</text>'
            f'<text x="{width}" y="{height - 6}" class="tick" text-anchor="end">now</text>{"".join(bars)}</svg></figure>')


def _site_rows(status: dict[str, Any], now: float) -> str:
    rows = []
    scrub, drills = status["scrub"]["sites"], status["drills"]["sites"]
    snaps, quarantined = status["snapshots"]["sites"], status["scrub"].get("quarantined", {})
    for name, site in status["sites"].items():
        primary = name == "primary"
        copies = scrub.get(name, {}).get("copies") if primary else site.get("verified_objects")
        backlog = 0 if primary else site.get("backlog_objects", 0)
        reachable = site.get("ok") if primary else site.get("reachable")
        drill = drills.get(name, {})
        last_drill = drill.get("last_run") or {}
        drill_text = "never" if not last_drill else f'{ago(now - last_drill["age_seconds"], now)} ({last_drill["state"]})'
        snap = snaps.get(name, {}).get("last_ok") or {}
        snap_text = ago(snap.get("at"), now)
        verified = site.get("last_verified_at") if not primary else None
        quarantine = quarantined.get(name)
        rows.append(
            f'<tr data-site="{e(name)}" class="{"down" if not reachable or quarantine else ""}">'
            f'<th>{e(name)}<small>{e(site.get("url", ""))}</small></th>'
            f'<td class="reachable">{"up" if reachable else "DOWN: " + e(site.get("site_error") or site.get("error") or site.get("last_error"))}</td>'
            f'<td class="copies" data-value="{e(copies)}">{e(copies)}</td>'
            f'<td class="backlog" data-value="{e(backlog)}">{e(backlog)}'
            f'{"" if primary else " (" + e(size(site.get("backlog_bytes"))) + ")"}</td>'
            f'<td class="rpo">{"-" if primary else e(duration(site.get("oldest_owed_age_seconds")))}</td>'
            f'<td>{"-" if primary else e(size(site.get("throughput_bytes_per_second"))) + "/s"}</td>'
            f'<td>{e(ago(verified, now)) if not primary else e(scrub.get(name, {}).get("overdue", 0)) + " overdue"}</td>'
            f'<td class="drill">{e(drill_text)}</td><td class="snapshot">{e(snap_text)}</td>'
            f'<td class="quarantine{" on" if quarantine else ""}">{"since " + e(when(quarantine["since"])) + ": " + e(quarantine["reason"]) if quarantine else "no"}</td></tr>')
    return "".join(rows)


def first_screen(status: dict[str, Any], protection: dict[str, Any], alerts: list[dict[str, Any]],
                 history: dict[str, dict[str, Any]], capacity: dict[str, Any], rto: dict[str, Any],
                 age: float, may_ack: bool, csrf: str) -> str:
    now = status["generated_at"]
    state = protection["state"]
    reasons = "".join(f'<li class="{e(r["severity"].replace(" ", "-"))}" data-code="{e(r["code"])}">{e(r["text"])}</li>'
                      for r in protection["reasons"])
    counts = status["counts"]
    alert_items = []
    for alert in alerts:
        button = ""
        if alert.get("id") is not None and may_ack and not alert.get("acknowledged_by"):
            button = (f'<form method="post" action="/alerts/{int(alert["id"])}/ack"><input type="hidden" name="csrf" '
                      f'value="{e(csrf)}"><button type="submit">Acknowledge</button></form>')
        acked = f' <small>acknowledged by {e(alert["acknowledged_by"])}</small>' if alert.get("acknowledged_by") else ""
        alert_items.append(f'<li class="alert {e(str(alert.get("severity", "")).replace(" ", "-"))}">'
                           f'<span>{e(alert["text"])}</span>{acked}{button}</li>')
    restores = [job for job in status["restores"] if job.get("state") in ("running", "planning")]
    restore_rows = "".join(
        f'<tr><td>{e(job["id"])}</td><td>{e(job["kind"])} to {e(job.get("peer") or job.get("destination"))}</td>'
        f'<td><progress max="100" value="{e(job["percent"])}"></progress> {e(job["percent"])} %</td>'
        f'<td>{e(job["sent"])}/{e(job["total"])}</td><td>{e(duration(job.get("eta_seconds")))}</td></tr>'
        for job in restores) or '<tr><td colspan="5">No restore running.</td></tr>'
    storage_rows = "".join(
        f'<tr data-site="{e(s["site"])}"><th>{e(s["site"])}</th><td>{e(size(s["bytes_stored"]))}</td>'
        f'<td>{e(size(s["free_bytes"]))}</td><td class="days-until-full">'
        f'{_days(s["days_until_full"])}</td>'
        f'<td>{e(size(s["forecast_bytes"]["1y"]))}</td><td>{e(size(s["forecast_bytes"]["5y"]))}</td></tr>'
        for s in capacity["sites"])
    last = rto["last_24h"]
    studies = "" if last.get("studies") is None else f'{last["studies"]} studies, '
    estimate = (f'about {duration(last["seconds"])}' if last.get("seconds") is not None
                else "an unknown time (nothing measured a restore rate yet)")
    return f"""
<section id="protection" class="protection {e(state.replace(" ", "-"))}">
<h1>Archive is <span id="protection-state">{e(state)}</span></h1><ul id="reasons">{reasons}</ul>
<p class="as-of" id="as-of" data-age="{age:.1f}">as of {e(when(now))}{f" ({duration(age)} ago; newer figures are on their way)" if age >= 5 else ""}
 <a href="/?fresh=1">refresh now</a></p></section>
<section class="counts"><div><b id="instances" data-value="{counts["instances"]}">{counts["instances"]}</b> instances</div>
<div><b id="studies" data-value="{counts["studies"]}">{counts["studies"]}</b> studies</div>
<div><b id="patients">{counts["patients"]}</b> patients</div>
<div><b>{e(size(status["bytes_stored"]))}</b> stored ({e(size(status["bytes_received"]))} received)</div>
<div>newest ingest <b>{e(ago(status["newest_ingest"], now))}</b></div>
<div>policy <b>{status["policy"]["copies"]} copies, {status["policy"]["offsite_copies"]} off-site</b></div></section>
<section><h2>Alerts</h2><ul id="alerts">{"".join(alert_items) or '<li class="none">No open alert.</li>'}</ul></section>
<section><h2>Sites</h2><table id="sites"><thead><tr><th>site</th><th>state</th><th>copies</th><th>backlog</th>
<th>live RPO</th><th>throughput</th><th>last verified</th><th>last drill</th><th>newest snapshot</th><th>quarantine</th>
</tr></thead><tbody>{_site_rows(status, now)}</tbody></table></section>
<section class="charts"><h2>Ingest</h2>{bar_chart(history["24h"]["points"], history["24h"]["bucket_seconds"], "last 24 h", "ingest-24h")}
{bar_chart(history["30d"]["points"], history["30d"]["bucket_seconds"], "last 30 days", "ingest-30d")}</section>
<section><h2>Storage</h2><table id="storage"><thead><tr><th>site</th><th>stored</th><th>free</th><th>full in</th>
<th>in 1 year</th><th>in 5 years</th></tr></thead><tbody>{storage_rows}</tbody></table></section>
<section><h2>Restores</h2><table id="restores"><thead><tr><th>job</th><th>what</th><th>progress</th><th>instances</th>
<th>ETA</th></tr></thead><tbody>{restore_rows}</tbody></table>
<p id="rto">Restoring the last 24 h ({e(studies)}{last["instances"]} instances, {e(size(last["bytes"]))}) into the PACS
would take {e(estimate)}. <small>{e(last.get("basis", ""))}</small></p></section>
<section><h2>Find a study</h2><form method="get" action="/study" id="find-study"><input name="uid" placeholder="Study Instance UID"
 aria-label="Study Instance UID"><button type="submit">Open</button></form></section>"""


def study_page(study: dict[str, Any], copies: list[dict[str, Any]], holds: list[Any], keep: Any,
               audit: list[Any], now: float) -> str:
    copy_rows = "".join(
        f'<tr data-site="{e(c["site"])}" data-state="{e(c["state"])}"><th>{e(c["site"])}</th><td class="state">{e(c["state"])}</td>'
        f'<td class="copies">{c["copies"]}</td><td>{e(size(c["bytes"]))}</td>'
        f'<td>{e(when(c["oldest_proof"]))}</td><td>{e(when(c["newest_proof"]))}</td></tr>' for c in copies)
    hold_items = "".join(f'<li>{e(h.scope)} hold by {e(h.actor)} since {e(when(h.created_at))}: {e(h.reason)}</li>'
                         for h in holds) or "<li>none</li>"
    keep_text = "no retention computed" if keep is None else (
        f'kept until {e(keep.keep_until)} (rule {e(keep.rule)})' if keep.keep_until else f"kept forever (rule {e(keep.rule)})")
    audit_rows = "".join(
        f'<tr><td>{e(when(r.ts))}</td><td>{e(r.actor)}</td><td>{e(r.action)}</td><td>{e(r.outcome)}</td>'
        f'<td><code>{e(_short(r.detail))}</code></td></tr>' for r in audit)
    return f"""<h1>Study {e(study["study_uid"])}</h1>
<dl class="study"><dt>Patient</dt><dd>{e(study["patient_name"])} ({e(study["patient_id"])})</dd>
<dt>Date</dt><dd>{e(study["study_date"])} {e(study["description"])}</dd><dt>Accession</dt><dd>{e(study["accession_number"])}</dd>
<dt>Modalities</dt><dd>{e(study["modalities"])}</dd>
<dt>Series</dt><dd id="series-count">{study["series"]}</dd><dt>Instances</dt><dd id="instance-count">{study["instances"]}</dd>
<dt>Retention</dt><dd id="keep-until">{keep_text}</dd><dt>Legal holds</dt><dd><ul id="holds">{hold_items}</ul></dd></dl>
<h2>Copies</h2><table id="copies"><thead><tr><th>site</th><th>state</th><th>copies</th><th>bytes</th>
<th>oldest proof</th><th>newest proof</th></tr></thead><tbody>{copy_rows}</tbody></table>
<h2>Audit trail</h2><table id="audit"><thead><tr><th>when</th><th>who</th><th>action</th><th>outcome</th><th>detail</th>
</tr></thead><tbody>{audit_rows}</tbody></table>"""


def _days(days: float | None) -> str:
    if days is None:
        return "not known"
    return "over 10 years" if days > 3650 else f"{days:.0f} days"


def _short(detail: str, limit: int = 200) -> str:
    try:
        text = json.dumps(json.loads(detail), sort_keys=True)
    except ValueError:
        text = detail
    return text if len(text) <= limit else text[:limit] + "..."
