#!/usr/bin/env python3
"""Restore throughput: dicomvault pouring 500 CT instances into an empty Orthanc, against DCMTK
storescu sending the same plain files from disk into an equally empty Orthanc.

Not a test. Writes 500 512x512 16-bit CT instances (fresh UIDs, 10 studies), imports them
into a fresh dicomvault (zstd + AES-GCM, as stored in production), then for every repeat and
for 1 and 4 associations, alternating who goes first:

- storescu: one ``storescu`` process per association, each sending a quarter (or all) of the
  files, timed from the first start to the last exit;
- dicomvault: ``dicomvault restore --to pacs --associations N --fresh``, timed from start to
  exit (planning, decrypting, verifying every SHA-256 and sending included).

The dicomvault figure is end to end (about 1 s of it is starting Python and importing
SQLAlchemy); the job's own sending rate (its report's ``seconds_sending``: first
association to last acknowledgement) is printed beside it, since over a real restore of
hours the start-up vanishes. Each run gets a fresh Orthanc (TCP_NODELAY=1, the same as every DCMTK process) and is checked
to hold all 500 instances afterwards. Best of ``--repeat`` runs; prints instances/s and the
dicomvault/storescu ratios against the targets (>= 0.9x on one association, > 1.0x on four).

The peer is storescu, a tool that sends over one association. The four-association target
("faster than storescu with 4 parallel associations") is therefore judged against storescu
as a user runs it, one process; the ratio against four storescu processes started side by
side, each with a quarter of the files, is printed too, as the stricter comparison.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ingest_data import corpus_run_arguments, ct_source, make_set  # noqa: E402
from ingest_receivers import Orthanc, dcmtk, dcmtk_env  # noqa: E402

TARGETS = {1: 0.9, 4: 1.0}  # dicomvault / storescu instances per second (4: must exceed)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomvault.cli", *args], capture_output=True, text=True,
                          timeout=1800)


def run_storescu(orthanc: Orthanc, folders: list[Path]) -> float:
    started = time.perf_counter()
    procs = [subprocess.Popen([dcmtk("storescu"), "-aec", orthanc.ae_title, "+sd", "+r", "127.0.0.1", str(orthanc.port),
                               str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env())
             for folder in folders]
    for proc in procs:
        _out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"storescu failed ({proc.returncode}): {err.decode()[-2000:]}")
    return time.perf_counter() - started


def run_restore(config: Path, base_config: str, orthanc: Orthanc, associations: int) -> tuple[float, dict]:
    config.write_text(base_config + f'\n[peers.pacs]\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\n'
                                    f"port = {orthanc.port}\n")
    started = time.perf_counter()
    proc = cli("restore", "--config", str(config), "--to", "pacs", "--associations", str(associations), "--fresh",
               "--json")
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dicomvault restore failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, json.loads(proc.stdout)


def compile_bytecode() -> None:
    """Byte-compile the dicomvault package first, as ``pip install`` does for an installed
    package: with an editable install and PYTHONDONTWRITEBYTECODE=1 (set on some machines),
    every ``dicomvault`` command would otherwise compile its modules from source at start-up."""
    import compileall

    import dicomvault

    compileall.compile_dir(str(Path(dicomvault.__file__).parent), quiet=1)


def main() -> None:
    args, work = corpus_run_arguments(__doc__, "dv-restore-")
    compile_bytecode()

    data = make_set("ct", ct_source(), work / "data", args.instances, studies=10, series_per_study=2)
    print(f"{data.count} instances, {data.total_bytes / 1e6:.0f} MB")
    vault = work / "vault"
    for step in (("init", "--dir", str(vault)), ("import", "--config", str(vault / "dicomvault.toml"), str(data.root))):
        proc = cli(*step)
        if proc.returncode != 0:
            raise SystemExit(f"dicomvault {step[0]} failed: {proc.stderr[-2000:]}")
    config = vault / "dicomvault.toml"
    base_config = config.read_text()

    results: dict[tuple[str, int], list[float]] = {}
    sending: dict[int, list[float]] = {}  # the restore job's own seconds_sending
    run = 0
    for repeat in range(args.repeat):
        for associations in (1, 4):
            order = ["storescu", "dicomvault"] if (repeat + associations) % 2 else ["dicomvault", "storescu"]
            for who in order:
                run += 1
                orthanc = Orthanc(work / f"orthanc-{run}")
                orthanc.start()
                try:
                    if who == "storescu":
                        folders = data.parts if associations == 4 else [data.root]
                        seconds = run_storescu(orthanc, folders)
                    else:
                        seconds, report = run_restore(config, base_config, orthanc, associations)
                        if report["sent"] != data.count:
                            raise SystemExit(f"restore sent {report['sent']} of {data.count}: {report['failures'][:3]}")
                        sending.setdefault(associations, []).append(report["seconds_sending"])
                    held = orthanc.count()
                    if held != data.count:
                        raise SystemExit(f"{who} run left {held} of {data.count} instances in Orthanc")
                finally:
                    orthanc.stop()
                    shutil.rmtree(orthanc.workdir, ignore_errors=True)
                results.setdefault((who, associations), []).append(seconds)
                print(f"  repeat {repeat + 1}, {associations} association(s): {who:<10} "
                      f"{data.count / seconds:6.1f} instances/s", flush=True)

    print()
    storescu = data.count / min(results[("storescu", 1)])  # the peer as a user runs it: one process
    print(f"storescu, one process (one association): {storescu:.1f} instances/s")
    print(f"{'associations':<13} {'dicomvault/s':>13} {'vs storescu':>12} {'target':>8}"
          f"  {'job sending/s':>14} {'ratio':>6}  {'N storescu in parallel':>23} {'ratio':>6}")
    for associations, target in TARGETS.items():
        ours = data.count / min(results[("dicomvault", associations)])
        ratio = ours / storescu
        passed = ratio > target if associations == 4 else ratio >= target
        sign = ">" if associations == 4 else ">="
        steady = data.count / min(sending[associations])
        side_by_side = data.count / min(results[("storescu", associations)])
        print(f"{associations:<13} {ours:13.1f} {ratio:11.2f}x {sign}{target:.1f}x {'PASS' if passed else 'miss'}"
              f"  {steady:14.1f} {steady / storescu:5.2f}x  {side_by_side:23.1f} {ours / side_by_side:5.2f}x")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
