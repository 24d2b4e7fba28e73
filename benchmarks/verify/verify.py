#!/usr/bin/env python3
"""Scrub throughput: `dicomvault verify --all` against `sha256sum` over the same plain files and
`restic check --read-data` over a restic repository of them, in one run.

Not a test. Writes 500 512x512 16-bit CT instances (fresh UIDs), imports them into a fresh
dicomvault (zstd + AES-GCM objects on a file site) and backs them up into a fresh restic
repository, then, alternating the order on every repeat, times:

- sha256sum: hashing every plain file (what a "checksum the backup" cron job does);
- restic: ``restic check --read-data`` (reads, decrypts and checks every pack);
- dicomvault: ``dicomvault verify --all`` (reads each sealed object, authenticates and
  decrypts it, decompresses it and checks the SHA-256 of the original bytes).

Each figure is MB/s of original data (the plain files' total size) over the command's wall
time, process start-up included; dicomvault's own rate (its report's ``seconds``) is printed
beside it. Files are in the page cache for all three (each reads them once before timing).
Targets: >= 0.7x sha256sum's rate and faster than restic.

Then the rebuild time of the corpus's catalog (`dicomvault rebuild-index`, wall time): from a
snapshot taken after the import (the scheduled case: only the snapshot is read), and from a
snapshot taken before it (every object is listed and opened: the worst case).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ingest_data import corpus_run_arguments, ct_source, make_set  # noqa: E402

TARGET_VS_SHA256SUM = 0.7


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({run.returncode}): {run.stderr[-2000:]}")
    return elapsed, run.stdout


def main() -> None:
    args, work = corpus_run_arguments(__doc__, "dv-verify-")
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed: apt-get install restic")

    data = make_set("ct", ct_source(), work / "data", args.instances, studies=10, series_per_study=2)
    files = sorted(str(p) for p in data.root.rglob("*.dcm"))
    megabytes = data.total_bytes / 1e6
    print(f"{data.count} instances, {megabytes:.0f} MB")

    cli = [sys.executable, "-m", "dicomvault.cli"]
    vault = work / "vault"
    timed([*cli, "init", "--dir", str(vault)])
    timed([*cli, "import", "--config", str(vault / "dicomvault.toml"), str(data.root)])
    restic_env = {**os.environ, "RESTIC_REPOSITORY": str(work / "restic"), "RESTIC_PASSWORD": "benchmark"}
    timed(["restic", "init"], restic_env)
    timed(["restic", "backup", "--quiet", str(data.root)], restic_env)

    commands = {
        "sha256sum": (["sha256sum", *files], None),
        "restic": (["restic", "check", "--read-data"], restic_env),
        "dicomvault": ([*cli, "verify", "--all", "--json", "--config", str(vault / "dicomvault.toml")], None),
    }
    for argv, env in commands.values():  # warm the page cache for everyone
        timed(argv, env)
    results: dict[str, list[float]] = {name: [] for name in commands}
    own: list[float] = []
    for repeat in range(args.repeat):
        order = list(commands) if repeat % 2 == 0 else list(commands)[::-1]
        for name in order:
            argv, env = commands[name]
            seconds, stdout = timed(argv, env)
            results[name].append(seconds)
            if name == "dicomvault":
                report = json.loads(stdout)
                if report["findings"] or report["sites"]["primary"]["ok"] != data.count:
                    raise SystemExit(f"verify did not find {data.count} good copies: {report['sites']}")
                own.append(report["seconds"])
            print(f"  repeat {repeat + 1}: {name:<10} {megabytes / seconds:7.1f} MB/s", flush=True)

    best = {name: megabytes / min(times) for name, times in results.items()}
    ratio_sha, ratio_restic = best["dicomvault"] / best["sha256sum"], best["dicomvault"] / best["restic"]
    print()
    print(f"sha256sum  {best['sha256sum']:7.1f} MB/s")
    print(f"restic     {best['restic']:7.1f} MB/s   (check --read-data)")
    print(f"dicomvault {best['dicomvault']:7.1f} MB/s   (verify --all; its own rate {megabytes / min(own):.1f} MB/s)")
    print(f"vs sha256sum {ratio_sha:.2f}x (target >= {TARGET_VS_SHA256SUM}x) "
          f"{'PASS' if ratio_sha >= TARGET_VS_SHA256SUM else 'miss'}; "
          f"vs restic {ratio_restic:.2f}x (target > 1.0x) {'PASS' if ratio_restic > 1.0 else 'miss'}")
    rebuild(cli, vault, data.count, "snapshot after the import", snapshot_first=False)
    second = work / "vault-objects"
    timed([*cli, "init", "--dir", str(second)])
    rebuild(cli, second, data.count, "every object opened", snapshot_first=True, source=data.root)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def rebuild(cli: list[str], vault: Path, count: int, label: str, snapshot_first: bool,
            source: Path | None = None) -> None:
    """Delete the catalog and time `rebuild-index --from primary` (the objects stay)."""
    config = ["--config", str(vault / "dicomvault.toml")]
    if snapshot_first:
        timed([*cli, "snapshot", *config])
    if source is not None:
        timed([*cli, "import", *config, str(source)])
    if not snapshot_first:
        timed([*cli, "snapshot", *config])
    for path in vault.glob("catalog.sqlite3*"):
        path.unlink()
    seconds, stdout = timed([*cli, "rebuild-index", "--from", "primary", "--recovery-key",
                             str(vault / "recovery-key.pem"), "--json", *config])
    report = json.loads(stdout)
    if report["instances"] != count:
        raise SystemExit(f"rebuild indexed {report['instances']} of {count} instances")
    print(f"rebuild-index ({label}): {seconds:.2f} s wall for {count} instances "
          f"({report['objects_after_snapshot']} objects opened, {report['snapshot_rows']} snapshot rows)")


if __name__ == "__main__":
    main()
