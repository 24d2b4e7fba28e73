"""How long the dashboard's first screen takes with a large catalog (issue 20: < 1 s at 1,000,000 instances).

    python3 benchmarks/dashboard_scale.py [--instances 1000000] [--repeat 5] [--keep]

Initialises an archive with a replica site, fills its catalog with ``benchmarks/synthetic_catalog.py``
(the capacity helper's filler, issue 20: instances spread over 120 days, a verified copy on each
site), starts a real ``dicomvault serve``, logs in through the form as a browser does and times
``GET /`` with that session cookie: the first request (which gathers the figures), median,
min and max of ``--repeat`` more (figures reused while under a minute old, serve/dashboard/figures.py)
and of ``--repeat`` ``GET /?fresh=1`` (which gather every time). The scheduled scrub, drill and snapshot jobs are switched off so they do not
compete for the CPU while the page is timed. Then times each figure the page gathers in-process,
so a slow one is named.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_key(config: Path, section: str, key: str, value: str) -> None:
    text, current, out = config.read_text().splitlines(), None, []
    for line in text:
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]")
        elif current == section and stripped.split("=")[0].strip() == key:
            line = f"{key} = {value}"
        out.append(line)
    config.write_text("\n".join(out) + "\n")


def cli(config: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dicomvault.cli", *args, "--config", str(config)], check=True,
                   capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    try:
        from synthetic_catalog import fill
    except ImportError:
        sys.exit("benchmarks/synthetic_catalog.py (issue 20, capacity branch) is needed to fill the catalog")

    root = Path(tempfile.mkdtemp(prefix="dv-dashboard-"))
    data, config = root / "vault", root / "vault" / "dicomvault.toml"
    subprocess.run([sys.executable, "-m", "dicomvault.cli", "init", "--dir", str(data)], check=True, capture_output=True)
    http_port = free_port()
    for section, key, value in (("dicom", "port", str(free_port())), ("dicom", "bind", '"127.0.0.1"'),
                                ("http", "port", str(http_port)), ("http", "bind", '"127.0.0.1"'),
                                ("scrub", "enabled", "false"), ("drill", "enabled", "false"),
                                ("snapshots", "enabled", "false")):
        set_key(config, section, key, value)
    cli(config, "sites", "add", "offsite", f"file://{root / 'offsite'}")
    from dicomvault.config import load_settings

    started = time.perf_counter()
    fill(load_settings(config).catalog_url, instances=args.instances, sites=("primary", "offsite")).close()
    print(f"catalog: {args.instances} instances filled in {time.perf_counter() - started:.0f} s")

    serve = subprocess.Popen([sys.executable, "-m", "dicomvault.cli", "serve", "--config", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{http_port}"
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        deadline = time.monotonic() + 120
        while True:
            try:
                form = opener.open(f"{base}/login", timeout=5).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise
                time.sleep(0.2)
        token = next(line.split(":")[1] for line in (data / "keys" / "api-tokens").read_text().splitlines()
                     if line.startswith("admin:"))
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        t0 = time.perf_counter()  # the login's redirect is the first GET /, which gathers the figures
        first = opener.open(f"{base}/login", data=urllib.parse.urlencode({"token": token, "csrf": csrf}).encode(),
                            timeout=120).read()
        cold = time.perf_counter() - t0
        assert any(c.name == "dicomvault_session" for c in jar) and b'id="protection-state"' in first, "login failed"

        def timed(path: str) -> float:
            t0 = time.perf_counter()
            body = opener.open(f"{base}{path}", timeout=120).read()
            elapsed = time.perf_counter() - t0
            assert b'id="protection-state"' in body, "not the first screen"
            return elapsed

        def line(label: str, runs: list[float]) -> None:
            print(f"  {label:44s} median {statistics.median(runs):.3f} s, min {min(runs):.3f} s, max {max(runs):.3f} s")

        print(f"GET / with a session, {args.instances} instances (median of {args.repeat}):")
        print(f"  {'login + first GET / after start (gathers)':44s} {cold:.3f} s")
        line("GET / (figures < 60 s old, served as they are)", [timed("/") for _ in range(args.repeat)])
        line("GET /?fresh=1 (gathers every time)", [timed("/?fresh=1") for _ in range(args.repeat)])
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    parts(config)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root}")


def parts(config: Path) -> None:
    """Each figure of the first screen timed in-process (one run each), slowest first."""
    from dicomvault.archive.core import Archive
    from dicomvault.config import load_settings
    from dicomvault.serve.dashboard import sources
    from dicomvault.serve.status import archive_status

    archive = Archive.open(load_settings(config))
    try:
        timings = []
        t0 = time.perf_counter()
        status = archive_status(archive)
        timings.append(("archive_status()", time.perf_counter() - t0))
        t0 = time.perf_counter()
        archive.catalog.statistics()
        timings.append(("  of which catalog.statistics()", time.perf_counter() - t0))
        for name, call in (("ingest_history 24h", lambda: sources.ingest_history(archive, "24h")),
                           ("ingest_history 30d", lambda: sources.ingest_history(archive, "30d")),
                           ("capacity", lambda: sources.capacity(archive)),
                           ("rto", lambda: sources.rto(archive)),
                           ("alerts", lambda: sources.alerts(archive, status))):
            t0 = time.perf_counter()
            call()
            timings.append((name, time.perf_counter() - t0))
        for name, seconds in timings:
            print(f"  {name:32s} {seconds:.3f} s")
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(archive_status, archive)
        print("archive_status(): the slowest of its parts (cumulative seconds, profiled):")
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        parts = sorted(((v[3], f"{Path(k[0]).parent.name}/{Path(k[0]).name}:{k[2]}") for k, v in stats.items()
                        if "/dicomvault/" in k[0] and k[2] not in ("archive_status", "read", "__enter__", "__exit__")),
                       reverse=True)
        for seconds, name in parts[:14]:
            print(f"  {name:60s} {seconds:.3f} s")
    finally:
        archive.close()


if __name__ == "__main__":
    main()
