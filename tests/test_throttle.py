"""Bandwidth control for replication: rates, weekly schedules, the shared token bucket.

Everything but two tests runs on a fake clock whose time moves only when the limiter sleeps
(or the test moves it), so hours of schedule take microseconds and timings are exact. The
real-time tests stream through a loopback TCP socket and through boto3 into a local S3 API
server, and measure throughput over wall time.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import random
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import free_port

from dicomvault.replicate.throttle import (
    MIB,
    MIN_BURST,
    RateLimiter,
    Schedule,
    SystemClock,
    ThrottleConfigError,
    ThrottledReader,
    Window,
    parse_rate,
    throttled_chunks,
)

MB = 10**6
MONDAY = datetime(2024, 1, 1)  # a Monday
assert MONDAY.weekday() == 0


def at(day: int, hh: int, mm: int = 0, ss: int = 0, us: int = 0) -> datetime:
    """Wall time in the test week: day 0 = Monday 2024-01-01."""
    return MONDAY + timedelta(days=day, hours=hh, minutes=mm, seconds=ss, microseconds=us)


class FakeClock:
    """Wall and monotonic time that move only when someone sleeps or the test advances them.

    Kept in whole microseconds so a sleep "until 07:00" lands exactly on 07:00; sleeps are
    rounded up so every sleep makes progress. Guarded by a lock for use by several threads.
    """

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._us = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self.sleeps: list[tuple[datetime, float]] = []  # (wall time when the sleep began, seconds)
        self.on_sleep = None  # optional hook, called (outside the lock) before time moves

    def now(self) -> datetime:
        with self._lock:
            return self._wall(self._us)

    def _wall(self, us: int) -> datetime:
        if self._start.tzinfo is None:
            return self._start + timedelta(microseconds=us)
        # an aware clock counts real time, so a daylight-saving change moves the wall clock
        return (self._start.astimezone(timezone.utc) + timedelta(microseconds=us)).astimezone(self._start.tzinfo)

    def monotonic(self) -> float:
        with self._lock:
            value = self._us / 1e6
        self._local.last = value
        return value

    def last_read(self) -> float:
        """The monotonic time this thread last read (the limiter reads it when it grants)."""
        return self._local.last

    def sleep(self, seconds: float) -> None:
        assert 0 <= seconds < math.inf, seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        with self._lock:
            self.sleeps.append((self._wall(self._us), seconds))
            self._us += math.ceil(seconds * 1e6 - 1e-6)

    def advance(self, seconds: float) -> None:
        """Time passing for other reasons (the network, idleness): not a limiter sleep."""
        with self._lock:
            self._us += round(seconds * 1e6)

    @property
    def elapsed(self) -> float:
        with self._lock:
            return self._us / 1e6


def limiter_for(default: str, windows: list[str], start: datetime) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock(start)
    return RateLimiter(Schedule.parse(default, windows), clock), clock


def assert_no_sleep_crosses(clock: FakeClock, boundary: datetime) -> None:
    for began, seconds in clock.sleeps:
        ended = began + timedelta(seconds=seconds)
        assert not (began < boundary < ended - timedelta(microseconds=1)), (
            f"a sleep from {began} for {seconds}s ran past the boundary {boundary}"
        )


# --- parse_rate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20MB/s", 20e6),
        ("20 MB/s", 20e6),
        ("  20MB/s  ", 20e6),
        ("500KB/s", 500e3),
        ("500kB/s", 500e3),
        ("1.5 MiB/s", 1.5 * 2**20),
        ("64KiB/s", 65536.0),
        ("2GB/s", 2e9),
        ("100B/s", 100.0),
        ("unlimited", None),
        (" Unlimited ", None),
        ("paused", 0.0),
        ("0MB/s", 0.0),
    ],
)
def test_parse_rate_accepts_the_documented_forms(text: str, expected: float | None) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "", "20MB", "20 MB/sec", "-5MB/s", "1e6B/s", "20 XB/s", "20mB/s", "MB/s", "20.MB/s"])
def test_parse_rate_refuses_anything_else_and_says_what_it_expected(text: str) -> None:
    with pytest.raises(ThrottleConfigError) as info:
        parse_rate(text)
    assert isinstance(info.value, ValueError)
    assert f"bad rate {text!r}" in str(info.value)
    assert 'expected e.g. "20MB/s" or "unlimited"' in str(info.value)


def test_parse_rate_error_message_matches_the_issue() -> None:
    with pytest.raises(ThrottleConfigError, match="^bad rate 'fast': expected e.g. \"20MB/s\" or \"unlimited\"$"):
        parse_rate("fast")


@pytest.mark.parametrize("text", ["100Mb/s", "100Mbps", "100 mbit/s"])
def test_parse_rate_points_out_bits_versus_bytes(text: str) -> None:
    with pytest.raises(ThrottleConfigError, match="capital B"):
        parse_rate(text)


def test_parse_rate_refuses_a_number_from_toml() -> None:
    with pytest.raises(ThrottleConfigError, match="bad rate 20"):
        parse_rate(20)  # type: ignore[arg-type]


# --- schedule parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "fragment"),
    [
        ("Mon-Fry 07:00-19:00 20MB/s", "unknown day 'Fry'"),
        ("Funday 07:00-08:00 1MB/s", "unknown day 'Funday'"),
        ("Sat,,Sun 07:00-08:00 1MB/s", "unknown day ''"),
        ("Mon 25:00-26:00 1MB/s", "start time 25:00"),
        ("Mon 07:00-25:00 1MB/s", "end time 25:00"),
        ("Mon 07:00-24:30 1MB/s", "end time 24:30"),
        ("Mon 24:00-08:00 1MB/s", "start time 24:00"),
        ("Mon 07:60-08:00 1MB/s", "start time 07:60"),
        ("Mon 07:00-07:00 1MB/s", "'07:00-07:00' is empty"),
        ("Mon 00:00-00:00 1MB/s", "use 00:00-24:00 for a whole day"),
        ("Mon 7-19 1MB/s", "bad time range '7-19' (expected HH:MM-HH:MM)"),
        ("Mon 07:00-19:00 fast", "bad rate 'fast'"),
        ("Mon 07:00-19:00", 'expected e.g. "Mon-Fri 07:00-19:00 20MB/s"'),
        ("", 'expected e.g. "Mon-Fri 07:00-19:00 20MB/s"'),
    ],
)
def test_bad_windows_are_refused_naming_the_offending_text(window: str, fragment: str) -> None:
    with pytest.raises(ThrottleConfigError) as info:
        Schedule.parse("unlimited", ["Sat,Sun 00:00-24:00 unlimited", window])
    message = str(info.value)
    assert f"bad window {window!r}" in message
    assert fragment in message


def test_bad_default_rate_is_refused() -> None:
    with pytest.raises(ThrottleConfigError, match="bad rate 'quick'"):
        Schedule.parse("quick", [])


def test_a_schedule_that_never_sends_is_refused() -> None:
    with pytest.raises(ThrottleConfigError, match="nothing would ever be sent"):
        Schedule.parse("paused", ["Mon-Fri 07:00-19:00 0MB/s"])
    assert Schedule.parse("paused", ["Sat,Sun 00:00-24:00 10MB/s"]).rate_at(at(5, 12)) == 10e6


def test_window_parsing_reads_days_times_and_rate() -> None:
    window = Window.parse("Mon-Wed,Fri 07:30-19:00 20 MB/s")
    assert window.days == frozenset({0, 1, 2, 4})
    assert (window.start_minute, window.minutes) == (7 * 60 + 30, 11 * 60 + 30)
    assert window.rate == 20e6
    assert Window.parse("Fri-Mon 00:00-24:00 unlimited").days == frozenset({4, 5, 6, 0})
    assert Window.parse("saturday,SUN 00:00-24:00 1MB/s").days == frozenset({5, 6})
    assert Window.parse("Mon 22:00-06:00 50MB/s").minutes == 8 * 60


# --- rate_at --------------------------------------------------------------------------------

OFFICE = ["Mon-Fri 07:00-19:00 20MB/s", "Sat,Sun 00:00-24:00 unlimited", "Mon 22:00-06:00 50MB/s"]


def test_rate_at_follows_the_working_week() -> None:
    schedule = Schedule.parse("100MB/s", OFFICE)
    assert schedule.rate_at(at(0, 6, 59, 59, 999_999)) == 100e6
    assert schedule.rate_at(at(0, 7)) == 20e6
    assert schedule.rate_at(at(4, 18, 59, 59)) == 20e6
    assert schedule.rate_at(at(4, 19)) == 100e6
    assert schedule.rate_at(at(5, 0)) is None
    assert schedule.rate_at(at(6, 23, 59, 59)) is None
    assert schedule.rate_at(at(2, 3)) == 100e6


def test_a_window_crossing_midnight_belongs_to_its_start_day_and_runs_into_the_next() -> None:
    schedule = Schedule.parse("100MB/s", OFFICE)
    assert schedule.rate_at(at(0, 21, 59)) == 100e6
    assert schedule.rate_at(at(0, 22)) == 50e6
    assert schedule.rate_at(at(1, 0)) == 50e6
    assert schedule.rate_at(at(1, 5, 59, 59, 999_999)) == 50e6
    assert schedule.rate_at(at(1, 6)) == 100e6
    assert schedule.rate_at(at(0, 3)) == 100e6  # Monday early morning: no Sunday-night window
    assert schedule.rate_at(at(1, 22, 30)) == 100e6  # only Monday's night


def test_sunday_night_window_runs_into_monday_morning() -> None:
    schedule = Schedule.parse("unlimited", ["Sun 22:00-06:00 1MB/s"])
    assert schedule.rate_at(at(6, 23)) == 1e6
    assert schedule.rate_at(at(7, 3)) == 1e6  # the Monday after
    assert schedule.rate_at(at(0, 3)) == 1e6  # and the Monday of the week asked about
    assert schedule.rate_at(at(0, 6)) is None


def test_overlapping_windows_first_listed_wins() -> None:
    specific_first = Schedule.parse("unlimited", ["Wed 12:00-13:00 unlimited", "Mon-Fri 07:00-19:00 20MB/s"])
    assert specific_first.rate_at(at(2, 12, 30)) is None
    assert specific_first.rate_at(at(2, 11)) == 20e6
    general_first = Schedule.parse("unlimited", ["Mon-Fri 07:00-19:00 20MB/s", "Wed 12:00-13:00 unlimited"])
    assert general_first.rate_at(at(2, 12, 30)) == 20e6


def test_rate_at_uses_the_wall_time_of_the_datetime_given() -> None:
    schedule = Schedule.parse("unlimited", ["Mon-Fri 07:00-19:00 20MB/s"])
    local = datetime(2024, 1, 1, 7, 30, tzinfo=timezone(timedelta(hours=1)))
    assert schedule.rate_at(local) == 20e6
    assert schedule.rate_at(local.astimezone(timezone.utc)) is None  # 06:30 UTC, same instant


# --- next_change_after ----------------------------------------------------------------------


def test_next_change_after_finds_the_next_boundary_exactly() -> None:
    schedule = Schedule.parse("100MB/s", OFFICE)
    assert schedule.next_change_after(at(0, 6, 59, 50)) == at(0, 7)
    assert schedule.next_change_after(at(0, 7)) == at(0, 19)  # strictly after
    assert schedule.next_change_after(at(0, 23)) == at(1, 6)  # out of the midnight-crossing window
    assert schedule.next_change_after(at(4, 19)) == at(5, 0)
    assert schedule.next_change_after(at(6, 12)) == at(7, 0)  # wraps the week: the weekend ends Monday 00:00


def test_next_change_after_skips_boundaries_where_the_rate_stays_the_same() -> None:
    schedule = Schedule.parse("unlimited", ["Mon-Fri 07:00-19:00 20MB/s", "Sat,Sun 00:00-24:00 unlimited"])
    assert schedule.next_change_after(at(4, 19)) == at(7, 7)


def test_next_change_after_keeps_the_time_zone_and_a_constant_rate_never_changes() -> None:
    schedule = Schedule.parse("unlimited", ["Mon-Fri 07:00-19:00 20MB/s"])
    tz = timezone(timedelta(hours=1))
    change = schedule.next_change_after(datetime(2024, 1, 1, 6, 0, tzinfo=tz))
    assert change == datetime(2024, 1, 1, 7, 0, tzinfo=tz)
    assert change.tzinfo is tz
    assert Schedule.parse("5MB/s", []).next_change_after(at(0, 1)) == at(7, 1)


def test_rate_is_constant_until_next_change_and_differs_there() -> None:
    schedule = Schedule.parse("100MB/s", OFFICE + ["Tue,Thu 12:00-12:30 1MB/s", "Fri-Mon 20:00-23:30 paused"])
    rng = random.Random(7)
    for _ in range(300):
        instant = MONDAY + timedelta(microseconds=rng.randrange(7 * 86400 * 10**6))
        change = schedule.next_change_after(instant)
        rate = schedule.rate_at(instant)
        assert change > instant
        assert schedule.rate_at(change) != rate, (instant, change)
        assert schedule.rate_at(change - timedelta(microseconds=1)) == rate, (instant, change)
        span = change - instant
        for k in range(1, 20):
            assert schedule.rate_at(instant + span * k / 20) == rate, (instant, change, k)


# --- RateLimiter on a fake clock ------------------------------------------------------------


def test_100_mb_at_5_mb_per_s_takes_20_s_in_one_request() -> None:
    limiter, clock = limiter_for("5MB/s", [], at(2, 10))
    limiter.acquire(100 * MB)
    assert clock.elapsed == pytest.approx(20.0, rel=0.01)
    assert limiter.bytes_sent_total == 100 * MB
    assert limiter.seconds_waited_total == pytest.approx(20.0, rel=0.01)
    assert max(seconds for _, seconds in clock.sleeps) <= 1.0 + 1e-6  # paid in chunks of one second


def test_100_mb_at_5_mb_per_s_takes_20_s_in_small_reads() -> None:
    limiter, clock = limiter_for("5MB/s", [], at(2, 10))
    piece = 64 * 1024
    sent = 0
    while sent < 100 * MB:
        n = min(piece, 100 * MB - sent)
        limiter.acquire(n)
        sent += n
    assert clock.elapsed == pytest.approx(20.0, rel=0.01)
    assert limiter.bytes_sent_total == 100 * MB


def test_low_rates_are_paid_in_chunks_of_at_least_256_kib() -> None:
    limiter, clock = limiter_for("64kB/s", [], at(2, 10))
    limiter.acquire(1 * MIB)
    assert len(clock.sleeps) == 4
    assert all(seconds == pytest.approx(MIN_BURST / 64e3) for _, seconds in clock.sleeps)
    assert clock.elapsed == pytest.approx(MIB / 64e3, rel=1e-4)


def test_unlimited_returns_at_once_and_still_counts() -> None:
    limiter, clock = limiter_for("unlimited", [], at(2, 10))
    limiter.acquire(10**12)
    limiter.acquire(0)
    assert clock.elapsed == 0
    assert clock.sleeps == []
    assert limiter.bytes_sent_total == 10**12
    assert limiter.current_rate() is None
    with pytest.raises(ValueError):
        limiter.acquire(-1)


def test_switch_from_unlimited_to_1_mb_per_s_exactly_at_07_00() -> None:
    """A fake 4 MB/s link: before 07:00 the link is the limit, from 07:00 the schedule is."""
    limiter, clock = limiter_for("unlimited", ["Mon-Fri 07:00-19:00 1MB/s"], at(0, 6, 59, 50))
    piece, link = 64 * 1024, 4e6
    grants: list[tuple[datetime, int]] = []
    while clock.now() < at(0, 7, 0, 20):
        limiter.acquire(piece)
        grants.append((clock.now(), piece))
        clock.advance(piece / link)  # the bytes cross the link
    before = sum(n for t, n in grants if t < at(0, 7))
    after = [(t, n) for t, n in grants if at(0, 7) <= t <= at(0, 7, 0, 10)]
    assert before == pytest.approx(10 * link, abs=piece)
    assert sum(n for _, n in after) == pytest.approx(10 * MB, abs=piece)
    assert after[0][0] - at(0, 7) < timedelta(seconds=piece / MB + piece / link)  # no lag at the switch
    assert_no_sleep_crosses(clock, at(0, 7))
    assert limiter.current_rate() == 1e6


def test_a_wait_wakes_at_the_boundary_and_continues_at_the_new_rate() -> None:
    limiter, clock = limiter_for("10MB/s", ["Mon-Fri 06:00-07:00 1MB/s"], at(0, 6, 59, 59, 500_000))
    limiter.acquire(2 * MB)
    # 0.5 s at 1 MB/s pays 0.5 MB; the remaining 1.5 MB at 10 MB/s takes 0.15 s
    assert abs((clock.now() - at(0, 7, 0, 0, 150_000)).total_seconds()) < 1e-3
    assert_no_sleep_crosses(clock, at(0, 7))


def test_a_wait_ends_exactly_when_the_rate_becomes_unlimited() -> None:
    limiter, clock = limiter_for("unlimited", ["Mon-Fri 06:00-07:00 1MB/s"], at(0, 6, 59, 59, 500_000))
    limiter.acquire(5 * MB)
    assert clock.now() == at(0, 7)


def test_a_paused_window_holds_everything_until_it_ends() -> None:
    limiter, clock = limiter_for("1MB/s", ["Mon 07:00-08:00 paused"], at(0, 7))
    limiter.acquire(1000)
    assert abs((clock.now() - at(0, 8, 0, 0, 1000)).total_seconds()) < 1e-5
    assert max(seconds for _, seconds in clock.sleeps) <= 60.0  # long waits are re-evaluated
    assert limiter.seconds_waited_total == pytest.approx(3600.001, abs=1e-3)


def test_idle_time_banks_at_most_one_second_of_the_rate() -> None:
    limiter, clock = limiter_for("5MB/s", [], at(2, 10))
    clock.advance(3600)
    limiter.acquire(20 * MB)
    assert clock.elapsed - 3600 == pytest.approx(3.0, abs=1e-3)  # 5 MB banked, 15 MB at 5 MB/s


def test_a_lower_rate_after_an_idle_boundary_allows_only_its_own_burst() -> None:
    limiter, clock = limiter_for("10MB/s", ["Mon 07:00-19:00 1MB/s"], at(0, 6))
    clock.advance(3605)  # idle across the boundary: the bucket filled at 10 MB/s
    limiter.acquire(3 * MB)
    # at most one second of the new rate was banked; the other 2 MB take 2 s
    assert clock.elapsed - 3605 == pytest.approx(2.0, abs=1e-3)


def test_a_boundary_across_a_daylight_saving_change_is_met_in_real_time() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    # 31 March 2024: at 02:00 the clocks jump to 03:00, so 03:00 is 30 real seconds away
    limiter, clock = limiter_for("paused", ["Sun 03:00-24:00 1MB/s"], datetime(2024, 3, 31, 1, 59, 30, tzinfo=berlin))
    limiter.acquire(1000)
    assert clock.elapsed == pytest.approx(30.001, abs=1e-5)
    assert clock.now() == datetime(2024, 3, 31, 3, 0, 0, 1000, tzinfo=berlin)


def test_current_rate_follows_the_clock() -> None:
    limiter, clock = limiter_for("unlimited", ["Mon-Fri 07:00-19:00 20MB/s"], at(0, 6, 59))
    assert limiter.current_rate() is None
    clock.advance(60)
    assert limiter.current_rate() == 20e6


def test_threads_sharing_one_limiter_never_exceed_the_rate_in_total() -> None:
    rate, threads, per_thread = 2 * MB, 4, 5 * MB
    limiter, clock = limiter_for("2MB/s", [], at(2, 10))
    grants: list[tuple[float, int]] = []
    grants_lock = threading.Lock()
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            sent = 0
            while sent < per_thread:
                n = min(rng.randint(1, 200 * 1024), per_thread - sent)
                limiter.acquire(n)
                with grants_lock:
                    grants.append((clock.last_read(), n))
                sent += n
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in pool), "a worker never finished"
    assert errors == []
    total = threads * per_thread
    assert sum(n for _, n in grants) == total == limiter.bytes_sent_total
    assert clock.elapsed == pytest.approx(total / rate, rel=0.01)

    grants.sort()
    burst = max(rate, MIN_BURST)
    cumulative = 0
    for t, n in grants:  # the bucket starts empty: never ahead of the rate
        cumulative += n
        assert cumulative <= rate * t + 1, (t, cumulative)
    for window in (0.25, 1.0, 3.0):  # any interval: at most rate x T + one burst
        j, in_window = 0, 0
        for i, (t0, _) in enumerate(grants):
            while j < len(grants) and grants[j][0] <= t0 + window:
                in_window += grants[j][1]
                j += 1
            assert in_window <= rate * window + burst + 1, (window, t0, in_window)
            in_window -= grants[i][1]


def test_waiting_workers_are_served_first_come_first_served() -> None:
    """A worker paying a large object chunk by chunk lets a later worker in between chunks."""
    limiter, clock = limiter_for("1MB/s", [], at(2, 10))
    done: dict[str, float] = {}
    small = threading.Thread(target=lambda: (limiter.acquire(MB), done.setdefault("small", clock.last_read())), daemon=True)

    def first_sleep(_: float) -> None:
        clock.on_sleep = None
        small.start()
        deadline = time.monotonic() + 10
        while limiter._turn._next_ticket < 2:  # the small worker is queued behind the large one
            assert time.monotonic() < deadline, "second worker never queued"
            time.sleep(0.001)

    clock.on_sleep = first_sleep
    limiter.acquire(10 * MB)
    done["large"] = clock.last_read()
    small.join(timeout=10)
    assert done["small"] == pytest.approx(2.0, abs=1e-3)  # after the large one's first chunk
    assert done["large"] == pytest.approx(11.0, abs=1e-3)


# --- streaming wrappers ---------------------------------------------------------------------


def test_throttled_reader_is_a_seekable_file_and_rewinds_are_charged_again() -> None:
    limiter, clock = limiter_for("1MB/s", [], at(2, 10))
    data = bytes(range(256)) * 4096  # 1 MiB
    reader = ThrottledReader(data, limiter)
    assert reader.readable() and reader.seekable()
    assert reader.seek(0, os.SEEK_END) == len(data) and reader.tell() == len(data)  # length, for free
    assert reader.read(10) == b""
    reader.seek(0)
    assert reader.bytes_charged == 0 and clock.elapsed == 0
    assert reader.read(1000) == data[:1000]
    assert reader.tell() == 1000
    buffer = bytearray(24)
    assert reader.readinto(buffer) == 24 and bytes(buffer) == data[1000:1024]
    assert reader.seek(-24, os.SEEK_CUR) == 1000
    assert reader.read() == data[1000:]
    reader.seek(0)
    assert reader.read() == data  # a second pass (a checksum pass, or a retry) ...
    assert reader.bytes_charged == 2 * len(data) + 24 == limiter.bytes_sent_total  # ... is paid again
    assert clock.elapsed == pytest.approx(reader.bytes_charged / MB, rel=1e-4)
    with pytest.raises(ValueError):
        reader.seek(-1)
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


def test_throttled_chunks_pays_each_piece_as_it_is_yielded() -> None:
    limiter, clock = limiter_for("2MB/s", [], at(2, 10))
    data = os.urandom(3 * MB + 17)
    seen: list[tuple[float, int]] = []
    for piece in throttled_chunks(data, limiter, chunk=100_000):
        seen.append((clock.elapsed, len(piece)))
        assert len(piece) <= 100_000
    assert b"".join(throttled_chunks(data, RateLimiter(Schedule.parse("unlimited", [])))) == data
    assert sum(n for _, n in seen) == len(data)
    assert seen[0][0] == pytest.approx(0.05)  # the first piece was paid before it was yielded
    assert clock.elapsed == pytest.approx(len(data) / 2e6, rel=1e-4)


# --- real time ------------------------------------------------------------------------------


@pytest.mark.slow
def test_5_mb_per_s_over_a_real_socket_for_20_s_stays_within_15_percent() -> None:
    rate, seconds = 5 * MB, 20
    payload = bytes(rate * seconds)
    server = socket.create_server(("127.0.0.1", 0))
    received = {"bytes": 0, "last": 0.0}
    per_second: dict[int, int] = {}
    started = time.monotonic()

    def receive() -> None:
        connection, _ = server.accept()
        buffer = bytearray(256 * 1024)
        with connection:
            connection.settimeout(60)
            while n := connection.recv_into(buffer):
                now = time.monotonic()
                received["bytes"] += n
                received["last"] = now
                per_second[int(now - started)] = per_second.get(int(now - started), 0) + n

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    with socket.create_connection(server.getsockname()) as sender:
        started = time.monotonic()
        limiter = RateLimiter(Schedule.parse("5MB/s", []), SystemClock())  # its bucket starts empty now
        reader = ThrottledReader(payload, limiter)
        while chunk := reader.read(64 * 1024):
            sender.sendall(chunk)
        sender.shutdown(socket.SHUT_WR)
        receiver.join(timeout=120)
    server.close()
    assert not receiver.is_alive()
    assert received["bytes"] == len(payload)
    elapsed = received["last"] - started
    throughput = received["bytes"] / elapsed
    assert abs(throughput - rate) <= 0.15 * rate, (
        f"{throughput / MB:.2f} MB/s over {elapsed:.1f}s; per second: {sorted(per_second.items())}"
    )
    assert limiter.bytes_sent_total == len(payload)
    assert limiter.seconds_waited_total > 0.5 * seconds  # the limiter, not the socket, set the pace


# --- boto3 against a local S3 API server ----------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_client(endpoint: str, **config: object):
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing", config=Config(**config),
    )
    try:
        client.create_bucket(Bucket="throttle-test")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


class TimedReader(ThrottledReader):
    """Notes when the upload last pulled from the body: the end of the streaming phase."""

    last: float = 0.0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.last = time.monotonic()
        return data


def test_boto3_put_object_with_the_recommended_settings_reads_once_at_the_limit(s3_endpoint: str) -> None:
    rate = 4 * MB
    client = s3_client(s3_endpoint, s3={"payload_signing_enabled": False})
    data = os.urandom(8 * MB)
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    started = time.monotonic()
    limiter = RateLimiter(Schedule.parse("4MB/s", []), SystemClock())  # its bucket starts empty now
    reader = TimedReader(data, limiter)
    client.put_object(Bucket="throttle-test", Key="one-pass", Body=reader, ChecksumSHA256=checksum)
    finished = time.monotonic()
    assert reader.bytes_charged == len(data)  # one pass: every byte paid exactly once
    assert client.get_object(Bucket="throttle-test", Key="one-pass")["Body"].read() == data
    # End to end it can only be slower than the limit. The pace while the body streams is the
    # limiter's (a sender delayed by less than the one-second burst catches up); the server's
    # work after the last byte (a fixed cost a busy machine inflates) is not bandwidth.
    end_to_end = len(data) / (finished - started)
    assert end_to_end <= rate * 1.01, f"{end_to_end / MB:.2f} MB/s end to end exceeds the limit"
    streaming = len(data) / (reader.last - started)
    assert abs(streaming - rate) <= 0.15 * rate, f"{streaming / MB:.2f} MB/s while streaming"


def test_boto3_put_object_with_default_settings_pays_for_every_pass(s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    data = os.urandom(2 * MB)
    limiter = RateLimiter(Schedule.parse("200MB/s", []), SystemClock())
    reader = ThrottledReader(data, limiter)
    client.put_object(Bucket="throttle-test", Key="default", Body=reader)
    assert client.get_object(Bucket="throttle-test", Key="default")["Body"].read() == data
    assert reader.bytes_charged >= len(data)
    assert reader.bytes_charged == limiter.bytes_sent_total
