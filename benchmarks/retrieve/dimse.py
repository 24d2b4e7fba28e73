#!/usr/bin/env python3
"""Retrieval throughput: C-GET and C-MOVE of one 500-instance CT study, dicomvault vs Orthanc.

Not a test. Writes a study of 512x512 16-bit CT instances (fresh UIDs), stores it in a fresh
dicomvault and a fresh Orthanc with DCMTK storescu, then, alternating between the two
servers for every repeat:

- C-GET: DCMTK ``getscu`` retrieves the study into a fresh folder;
- C-MOVE: DCMTK ``movescu`` asks the server to send the study to a DCMTK ``storescp``.

Every DCMTK process runs with TCP_NODELAY=1. Each run is checked (all instances arrived) and
timed from the tool's start to its exit; the best of ``--repeat`` runs is reported, with the
dicomvault/Orthanc ratio against the target (>= 1.0x). See README.md in this folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ingest_data import corpus_run_arguments, ct_source, make_set  # noqa: E402
from ingest_receivers import DicomVault, Orthanc, Receiver, StoreScp, dcmtk, dcmtk_env  # noqa: E402

TARGET = 1.0  # dicomvault / Orthanc instances per second, for C-GET and C-MOVE
CALLER = "BENCH"


def store(receiver: Receiver, folders: list[Path]) -> None:
    for folder in folders:
        run = subprocess.run([dcmtk("storescu"), "-aet", CALLER, "-aec", receiver.ae_title, "+sd", "127.0.0.1",
                              str(receiver.port), str(folder)], capture_output=True, text=True, env=dcmtk_env())
        if run.returncode != 0:
            raise SystemExit(f"storing into {receiver.name} failed: {run.stderr[-2000:]}")


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env=dcmtk_env(), timeout=1800)
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} failed ({run.returncode}): {run.stderr[-2000:]}")
    return elapsed, run.stdout + run.stderr


def count_files(folder: Path) -> int:
    return sum(1 for entry in os.scandir(folder) if entry.is_file()) if folder.exists() else 0


def main() -> None:
    args, work = corpus_run_arguments(__doc__, "dv-retrieve-")

    data = make_set("study", ct_source(), work / "data", args.instances, studies=1, series_per_study=1)
    import pydicom

    study_uid = str(pydicom.dcmread(next(data.parts[0].iterdir()), stop_before_pixels=True).StudyInstanceUID)
    print(f"{data.count} instances, {data.total_bytes / 1e6:.0f} MB, study {study_uid}")

    destination = StoreScp(work / "dest", fork=False)
    destination.start()
    peers = f'[peers.dest]\nae_title = "{destination.ae_title}"\nhost = "127.0.0.1"\nport = {destination.port}\n'
    vault = DicomVault(work / "dicomvault", extra_toml=peers)
    orthanc = Orthanc(work / "orthanc", extra_config={
        "DicomModalities": {"dest": [destination.ae_title, "127.0.0.1", destination.port],
                            "bench": [CALLER, "127.0.0.1", 4242]},
        "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
    })
    servers: list[Receiver] = [vault, orthanc]
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for server in servers:
            server.start()
            store(server, data.parts)
            if server.count() != data.count:
                raise SystemExit(f"{server.name} holds {server.count()} instances, expected {data.count}")
        for repeat in range(args.repeat):
            for server in (servers if repeat % 2 == 0 else servers[::-1]):
                keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
                out = work / f"get-{server.name}-{repeat}"
                out.mkdir()
                seconds, log = timed([dcmtk("getscu"), "-S", "-aet", CALLER, "-aec", server.ae_title, "-od", str(out),
                                      *keys, "127.0.0.1", str(server.port)])
                got = count_files(out)
                if got != data.count:
                    raise SystemExit(f"C-GET from {server.name}: {got} of {data.count} files\n{log[-2000:]}")
                results.setdefault((server.name, "C-GET"), []).append(seconds)
                shutil.rmtree(out)

                before = destination.count()
                seconds, log = timed([dcmtk("movescu"), "-S", "-aet", CALLER, "-aec", server.ae_title, "-aem",
                                      destination.ae_title, *keys, "127.0.0.1", str(server.port)])
                moved = destination.count() - before
                if moved != data.count:
                    raise SystemExit(f"C-MOVE from {server.name}: {moved} of {data.count} arrived\n{log[-2000:]}")
                results.setdefault((server.name, "C-MOVE"), []).append(seconds)
                shutil.rmtree(destination.out)
                destination.out.mkdir()
                print(f"  repeat {repeat + 1}: {server.name:<10} C-GET {data.count / results[(server.name, 'C-GET')][-1]:6.1f}/s"
                      f"  C-MOVE {data.count / results[(server.name, 'C-MOVE')][-1]:6.1f}/s", flush=True)
    finally:
        for server in (*servers, destination):
            server.stop()

    print()
    print(f"{'operation':<8} {'dicomvault/s':>13} {'Orthanc/s':>10} {'ratio':>7} {'target':>7}")
    for operation in ("C-GET", "C-MOVE"):
        ours = data.count / min(results[("dicomvault", operation)])
        theirs = data.count / min(results[("orthanc", operation)])
        ratio = ours / theirs
        verdict = "PASS" if ratio >= TARGET else "miss"
        print(f"{operation:<8} {ours:13.1f} {theirs:10.1f} {ratio:6.2f}x {TARGET:6.1f}x {verdict}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
