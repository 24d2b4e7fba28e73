"""The lean acceptor's resource bounds, over loopback against the real DicomListener.

What an attacker (or a PACS sending a huge instance) found: P-DATA of one instance was
buffered without limit, and idle TCP connections held association slots until the network
timeout. Here: an instance over ``max_instance_bytes`` is refused with 0xA700 and the
association goes on; a large one is spooled to a file in the given directory (none left
behind); the shared memory budget makes a second sender wait instead of failing; idle
connections get a short ARTIM, the oldest is dropped past ``max_pending_connections``, and only
negotiated associations count against ``max_associations``. Plus a property-based fuzz of the
PDU stream: whatever arrives, the listener answers or aborts, stores nothing from a
malformed stream and still accepts a good association.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_upper_layer_fsm import (
    APPLICATION_CONTEXT,
    CT,
    IMPLICIT,
    VERIFICATION,
    Listener,
    echo_works,
    read_message,
    read_pdu,
    store_command,
)

from dicomvault.config import DicomSettings
from dicomvault.net import pdu
from dicomvault.net.acceptor import Association, DicomListener
from dicomvault.net.associate import encode_associate_rq
from dicomvault.net.spool import MemoryBudget, SpooledDataset


class Recorder:
    """A store handler that records what it was given (bytes, even when handed a map)."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes]] = []
        self.kinds: list[type] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self, _assoc: Association, _sop_class: str, sop_instance: str, _syntax: str,
                 dataset: Any) -> tuple[int, str]:
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.kinds.append(type(dataset))
        self.stored.append((sop_instance, bytes(dataset)))
        return 0x0000, ""


@contextmanager
def running(spool_dir: Path | None = None, **overrides: Any) -> Iterator[tuple[Listener, Recorder]]:
    recorder = Recorder()
    port = free_port()
    values: dict[str, Any] = {"port": port, "bind": "127.0.0.1", "network_timeout": 10.0, **overrides}
    server = DicomListener(DicomSettings(**values), recorder, spool_dir=spool_dir)
    server.start()
    try:
        yield Listener(port, server, recorder.stored), recorder
    finally:
        server.stop()


def send_store(sock: socket.socket, message_id: int, sop_instance: str, dataset: bytes, max_pdu: int = 65536) -> None:
    for piece in pdu.message(1, store_command(message_id, sop_instance), dataset, max_pdu):
        sock.sendall(piece)


def store_status(sock: socket.socket) -> tuple[int | None, str]:
    reply, _ = read_message(sock)
    assert pdu.command_us(reply, pdu.TAG_COMMAND_FIELD) == pdu.C_STORE_RSP
    comment = reply.get(pdu.TAG_ERROR_COMMENT, b"").decode("ascii").strip()
    return pdu.command_us(reply, pdu.TAG_STATUS), comment


# --- memory -----------------------------------------------------------------------------------


def test_an_instance_over_max_instance_bytes_is_refused_and_the_association_goes_on(tmp_path: Path) -> None:
    with running(tmp_path / "spool", max_instance_bytes=100_000, spool_threshold_bytes=30_000) as (listener, rec):
        with listener.associate() as sock:
            send_store(sock, 1, "1.2.3.1", os.urandom(250_000))
            status, comment = store_status(sock)
            assert status == 0xA700
            assert comment.startswith("instance larger than max_instance_bytes (100000)")
            small = os.urandom(99_000)  # under the limit, on the same association
            send_store(sock, 2, "1.2.3.2", small)
            assert store_status(sock) == (0x0000, "")
            sock.sendall(pdu.RELEASE_RQ)
            assert read_pdu(sock)[0] == pdu.A_RELEASE_RP
        assert rec.stored == [("1.2.3.2", small)]
        assert listener.listener.budget.used == 0


def test_a_data_set_beyond_the_spool_threshold_is_handed_on_from_an_unnamed_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with running(spool, spool_threshold_bytes=64 * 1024) as (listener, rec):
        big, small = os.urandom(3 * 1024 * 1024 + 17), os.urandom(1000)
        with listener.associate() as sock:
            send_store(sock, 1, "1.2.3.1", big)
            assert store_status(sock)[0] == 0
            send_store(sock, 2, "1.2.3.2", small)
            assert store_status(sock)[0] == 0
        assert rec.stored == [("1.2.3.1", big), ("1.2.3.2", small)]
        assert rec.kinds == [SpooledDataset, bytes], "the large one came from the spool file, the small from memory"
        assert spool.is_dir() and oct(spool.stat().st_mode & 0o777) == "0o700"
        assert list(spool.iterdir()) == [], "spool files are never visible (unnamed), so a crash leaves none"
        wait_until(lambda: listener.listener.budget.used == 0, timeout=10, what="the budget to be released")


def test_a_full_memory_budget_makes_the_next_sender_wait_not_fail(tmp_path: Path) -> None:
    """The first instance (2 MiB, spooled) is held in the budget while its handler runs; the
    second sender's data set does not fit and waits (its socket is not read) until the first
    is done, then goes through."""
    mib = 1024 * 1024
    with running(tmp_path / "spool", max_buffered_bytes=3 * mib, spool_threshold_bytes=256 * 1024) as (listener, rec):
        budget = listener.listener.budget
        rec.gate.clear()
        first, second = listener.associate(), listener.associate()
        try:
            send_store(first, 1, "1.2.3.1", os.urandom(2 * mib))
            assert rec.entered.wait(10)
            assert budget.used == 2 * mib
            done = threading.Event()
            sender = threading.Thread(target=lambda: (send_store(second, 1, "1.2.3.2", os.urandom(2 * mib)),
                                                      done.set()), daemon=True)
            sender.start()
            wait_until(lambda: budget.waits >= 1, timeout=10, what="the second sender to wait for memory")
            assert rec.calls == 1, "the second instance reached the handler beyond the budget"
            rec.gate.set()
            assert store_status(first)[0] == 0
            assert store_status(second)[0] == 0
            assert done.wait(10)
        finally:
            rec.gate.set()
            first.close()
            second.close()
        assert sorted(uid for uid, _ in rec.stored) == ["1.2.3.1", "1.2.3.2"]
        wait_until(lambda: budget.used == 0, timeout=10, what="the budget to be released")


def test_the_memory_budget_serves_waiters_in_order_and_lets_one_oversized_through_alone() -> None:
    async def scenario() -> list[str]:
        budget, granted = MemoryBudget(10), []

        async def take(name: str, size: int) -> None:
            await budget.reserve(size)
            granted.append(name)

        await take("first", 6)
        big = asyncio.create_task(take("big", 20))  # larger than the whole budget: waits for 0
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 1))  # would fit, but is behind "big"
        await asyncio.sleep(0)
        assert granted == ["first"] and budget.waits == 2
        budget.release(6)
        await asyncio.gather(big)
        await asyncio.sleep(0)
        assert granted == ["first", "big"], "nothing else while the oversized one holds the budget"
        budget.release(20)
        await small
        assert budget.used == 1
        return granted

    assert asyncio.run(scenario()) == ["first", "big", "small"]


def test_without_a_spool_directory_memory_is_still_bounded_per_instance() -> None:
    with running(None, max_instance_bytes=50_000) as (listener, rec):
        with listener.associate() as sock:
            send_store(sock, 1, "1.2.3.1", os.urandom(60_000))
            assert store_status(sock)[0] == 0xA700
            send_store(sock, 2, "1.2.3.2", b"\x00" * 40_000)
            assert store_status(sock)[0] == 0
        assert [uid for uid, _ in rec.stored] == ["1.2.3.2"]


# --- idle connections -------------------------------------------------------------------------


def connected(sock: socket.socket) -> bool:
    """Still open from the server's side (nothing to read, no EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_idle_connections_neither_hold_slots_nor_outlive_the_artim() -> None:
    with running(None, max_associations=2, max_pending_connections=10, artim_timeout=1.5) as (listener, _rec):
        idle = [listener.connect() for _ in range(30)]
        try:
            started = time.monotonic()
            held = [listener.associate(), listener.associate()]  # both slots, despite 30 idle connections
            assert time.monotonic() - started < 2
            wait_until(lambda: listener.active() == 2, timeout=5, what="two negotiated associations")
            with listener.connect() as third:  # the slots are full: transient rejection, as before
                third.sendall(encode_associate_rq("DICOMVAULT", "PROBE", APPLICATION_CONTEXT,
                                                  [(1, VERIFICATION, [IMPLICIT])], 16384, "1.2.3.4", ""))
                kind, body = read_pdu(third)
                assert (kind, body[1:4]) == (pdu.A_ASSOCIATE_RJ, bytes([2, 3, 2]))
            for sock in held:
                sock.close()
            wait_until(lambda: listener.active() == 0, timeout=10, what="the slots to be freed")
            # the oldest idle ones were dropped for newer ones; the rest go when the ARTIM expires
            assert sum(not connected(s) for s in idle) >= 20
            wait_until(lambda: not any(connected(s) for s in idle), timeout=10, what="the ARTIM to close the rest")
            assert time.monotonic() - started >= 1.0
            assert echo_works(listener)
        finally:
            for sock in idle:
                sock.close()


def test_an_association_request_must_arrive_whole_within_the_artim() -> None:
    """A slowloris sending its A-ASSOCIATE-RQ a byte at a time is cut at the ARTIM."""
    with running(None, artim_timeout=1.0) as (listener, _rec):
        request = encode_associate_rq("DICOMVAULT", "PROBE", APPLICATION_CONTEXT, [(1, CT, [IMPLICIT])],
                                      16384, "1.2.3.4", "")
        with listener.connect() as sock:
            started = time.monotonic()
            closed = False
            for byte in request:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if not connected(sock):
                    closed = True
                    break
                time.sleep(0.05)  # the attacker's pace, not synchronisation
            assert closed, "the whole slow request was read: no ARTIM"
            assert time.monotonic() - started < 5
        assert echo_works(listener)


# --- fuzz -------------------------------------------------------------------------------------

REQUEST = encode_associate_rq("DICOMVAULT", "FUZZ", APPLICATION_CONTEXT,
                              [(1, CT, [IMPLICIT]), (3, VERIFICATION, [IMPLICIT])], 16384, "1.2.3.4", "")


def _pdv(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">IBB", len(value) + 2, context_id, control) + value


def _p_data(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BBI", pdu.P_DATA_TF, 0, len(body)) + body


@st.composite
def broken_requests(draw: st.DrawFn) -> bytes:
    """A mutated, truncated or random A-ASSOCIATE-RQ (or another PDU in its place)."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(min_size=1, max_size=300))
    data = bytearray(REQUEST)
    if choice == 1:
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if choice == 2:
        return bytes(data[: draw(st.integers(1, len(data) - 1))])
    kind = draw(st.sampled_from([0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0x08, 0xFF]))
    body = draw(st.binary(max_size=80))
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFFFFFF)))
    return struct.pack(">BBI", kind, 0, length) + body


@st.composite
def broken_streams(draw: st.DrawFn) -> bytes:
    """A good association and the start of a C-STORE, then something that cannot be valid
    before the data set's last fragment: the instance must not be stored."""
    command = store_command(9, "1.2.3.666")
    whole_command = draw(st.booleans())
    prefix = _p_data(_pdv(1, 0x03, command)) if whole_command else _p_data(_pdv(1, 0x01, command[:10]))
    started_data = whole_command and draw(st.booleans())
    if started_data:
        prefix += _p_data(_pdv(1, 0x00, draw(st.binary(min_size=1, max_size=200))))
    # out of order: a data set fragment before its command is whole, or a new command
    # before the data set's last fragment
    out_of_order = _p_data(_pdv(1, 0x02, b"\x00" * 8)) if not whole_command else _p_data(_pdv(1, 0x03, command))
    garbage = draw(st.binary(max_size=120))
    breakage = draw(st.sampled_from([
        struct.pack(">BBI", draw(st.sampled_from([0x00, 0x08, 0x0C, 0x7F, 0xFF])), 0, len(garbage)) + garbage,
        _p_data(_pdv(99, 0x02, garbage)),  # a context never accepted
        struct.pack(">BBI", pdu.P_DATA_TF, 0, 8) + struct.pack(">I", 4000) + b"\x01\x02",  # PDV past its PDU
        struct.pack(">BBI", pdu.P_DATA_TF, 0, 0x7FFFFFFF) + garbage,  # beyond the negotiated maximum
        struct.pack(">BBI", pdu.A_ASSOCIATE_RQ, 0, len(garbage)) + garbage,  # a second request
        struct.pack(">BBI", pdu.A_RELEASE_RP, 0, 4) + b"\x00" * 4,
        out_of_order,
        garbage[:5],  # a cut header, then the connection closes
    ]))
    return REQUEST + prefix + breakage


def _answer_of(listener: Listener, stream: bytes) -> list[int]:
    """Send ``stream``, half-close, and read every PDU type until the listener closes."""
    kinds: list[int] = []
    with listener.connect() as sock:
        sock.settimeout(10)
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the listener may have closed already: that is an answer too
        buffer = b""
        try:
            while chunk := sock.recv(65536):
                buffer += chunk
        except ConnectionResetError:
            pass
    while len(buffer) >= 6:
        kind, _, length = struct.unpack(">BBI", buffer[:6])
        kinds.append(kind)
        buffer = buffer[6 + length:]
    assert buffer == b"", "the listener sent a cut PDU"
    return kinds


class Errors(logging.Handler):
    """ERROR records of the listener (``log.exception``: an exception it did not expect)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[tuple[Listener, Recorder, Errors]]:
    errors = Errors()
    logger = logging.getLogger("dicomvault.net.acceptor")
    logger.addHandler(errors)
    try:
        with running(None, network_timeout=2.0, artim_timeout=1.0, max_instance_bytes=4096,
                     max_pending_connections=64) as (listener, recorder):
            yield listener, recorder, errors
    finally:
        logger.removeHandler(errors)


FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(stream=broken_requests())
def test_fuzz_association_requests(fuzz_target: tuple[Listener, Recorder, Errors], stream: bytes) -> None:
    listener, rec, errors = fuzz_target
    kinds = _answer_of(listener, stream)
    assert set(kinds) <= {pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.A_ABORT}
    assert len(kinds) <= 2
    assert errors.records == [], "an unexpected exception in the listener"
    assert rec.stored == []


@FUZZ
@given(stream=broken_streams())
def test_fuzz_broken_streams_store_nothing(fuzz_target: tuple[Listener, Recorder, Errors], stream: bytes) -> None:
    listener, rec, errors = fuzz_target
    kinds = _answer_of(listener, stream)
    assert kinds[:1] == [pdu.A_ASSOCIATE_AC]
    assert set(kinds[1:]) <= {pdu.A_ABORT}, f"only an A-ABORT may follow, got {kinds}"
    assert errors.records == [], "an unexpected exception in the listener"
    assert rec.stored == [], "something from a malformed stream was stored"


def test_after_the_fuzz_a_good_association_still_works(fuzz_target: tuple[Listener, Recorder, Errors]) -> None:
    listener, rec, errors = fuzz_target
    assert listener.listener._thread is not None and listener.listener._thread.is_alive()
    assert echo_works(listener)
    with listener.associate() as sock:
        send_store(sock, 1, "1.2.3.7", b"\x08\x00" * 100)
        assert store_status(sock)[0] == 0
    assert rec.stored == [("1.2.3.7", b"\x08\x00" * 100)]
    wait_until(lambda: listener.active() == 0 and not listener.listener._pending, timeout=10,
               what="every fuzz connection to be gone")
    assert errors.records == []
