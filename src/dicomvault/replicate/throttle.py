"""Per-site bandwidth control for replication: a rate limit and a weekly schedule of windows.

Why: off-site copies travel over the hospital's WAN link, which clinical systems share. The
operator promises the network team a ceiling (say 20 MB/s in working hours) and lets
replication use the whole link at night and at weekends. One ``RateLimiter`` per site is
shared by every worker thread of that site, so the ceiling holds for the site as a whole
however many uploads run at once.

Pieces, lowest first:

- ``parse_rate``: ``"20MB/s"`` -> 20e6 bytes per second, ``"unlimited"`` -> None.
- ``Window`` / ``Schedule``: a default rate plus weekly windows in local wall time.
- ``Clock`` / ``SystemClock``: wall time (for the schedule), monotonic time (for the
  bucket) and sleep, injectable so tests run hours of schedule in microseconds.
- ``RateLimiter``: a token bucket driven by the schedule.
- ``ThrottledReader`` / ``throttled_chunks``: pay for bytes as they are streamed, so an
  upload is paced while it runs instead of being paid up front and then sent at line rate.
"""

from __future__ import annotations

import io
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Protocol

KIB = 1024
MIB = 1024 * KIB

#: The bucket holds one second's worth of the current rate, but never less than this, so a
#: low rate still lets a sensible chunk through and a large object is paid in chunks.
MIN_BURST = 256 * KIB
BURST_SECONDS = 1.0

#: Longest single sleep. A wait never sleeps past the next schedule boundary; this cap also
#: bounds the damage of a wall clock that jumps (NTP step, DST with a fixed-offset clock).
MAX_SLEEP = 60.0

#: Floor for a sleep "until the boundary" so a clock that reports the boundary as already
#: reached (separate wall and monotonic clocks disagree by a hair) cannot make us spin.
MIN_BOUNDARY_SLEEP = 0.001

#: Float slack when comparing tokens with a chunk (bytes): sub-byte rounding is not a debt.
_EPS_BYTES = 0.5

_US_PER_MINUTE = 60 * 10**6
_MINUTES_PER_DAY = 24 * 60
_WEEK_US = 7 * _MINUTES_PER_DAY * _US_PER_MINUTE


from dicomvault.rates import _RATE_EXPECTED, ThrottleConfigError, parse_rate  # noqa: F401  (re-exported)


# --- schedule -------------------------------------------------------------------------------

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WINDOW_EXPECTED = 'expected e.g. "Mon-Fri 07:00-19:00 20MB/s"'
_TIME_RANGE_RE = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")


def _day_index(name: str, window: str) -> int:
    lowered = name.strip().lower()
    for names in (_DAY_NAMES, _FULL_DAY_NAMES):
        if lowered in names:
            return names.index(lowered)
    raise ThrottleConfigError(
        f"bad window {window!r}: unknown day {name.strip()!r} "
        "(expected Mon..Sun, a range like Mon-Fri or a list like Sat,Sun)"
    )


def _parse_days(text: str, window: str) -> frozenset[int]:
    """``"Mon-Fri"``, ``"Sat,Sun"``, ``"Mon-Wed,Fri"``; a range may wrap (``"Fri-Mon"``)."""
    days: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            first_name, _, last_name = part.partition("-")
            first, last = _day_index(first_name, window), _day_index(last_name, window)
            days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
        else:
            days.add(_day_index(part, window))
    return frozenset(days)


def _minute_of_day(hour: str, minute: str, window: str, *, is_end: bool) -> int:
    h, m = int(hour), int(minute)
    valid = 0 <= m <= 59 and (0 <= h <= 23 or (is_end and h == 24 and m == 0))
    if not valid:
        what = "end" if is_end else "start"
        limit = "00:00..24:00" if is_end else "00:00..23:59"
        raise ThrottleConfigError(f"bad window {window!r}: {what} time {hour}:{minute} is not a time of day ({limit})")
    return h * 60 + m


@dataclass(frozen=True)
class Window:
    """One schedule line: on these days, from start for ``minutes``, this rate (local wall time).

    A window whose end is earlier than its start (``"Mon 22:00-06:00"``) belongs to the day it
    starts on and runs on into the next day (Sunday's runs into Monday).
    """

    text: str
    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start_minute: int  # minutes after midnight
    minutes: int  # length, 1..1440
    rate: float | None

    @classmethod
    def parse(cls, text: str) -> Window:
        if not isinstance(text, str):
            raise ThrottleConfigError(f"bad window {text!r}: {_WINDOW_EXPECTED}")
        parts = text.split(None, 2)
        if len(parts) != 3:
            raise ThrottleConfigError(f"bad window {text!r}: {_WINDOW_EXPECTED}")
        days_text, times_text, rate_text = parts
        days = _parse_days(days_text, text)
        match = _TIME_RANGE_RE.fullmatch(times_text)
        if match is None:
            raise ThrottleConfigError(f"bad window {text!r}: bad time range {times_text!r} (expected HH:MM-HH:MM)")
        start = _minute_of_day(match[1], match[2], text, is_end=False)
        end = _minute_of_day(match[3], match[4], text, is_end=True)
        if end == start:
            raise ThrottleConfigError(
                f"bad window {text!r}: time range {times_text!r} is empty (use 00:00-24:00 for a whole day)"
            )
        minutes = end - start if end > start else end - start + _MINUTES_PER_DAY
        try:
            rate = parse_rate(rate_text)
        except ThrottleConfigError as exc:
            raise ThrottleConfigError(f"bad window {text!r}: {exc}") from None
        return cls(text=text, days=days, start_minute=start, minutes=minutes, rate=rate)

    def spans(self) -> list[tuple[int, int]]:
        """Half-open [start, end) intervals in microseconds since Monday 00:00, wrapped at week end."""
        out: list[tuple[int, int]] = []
        for day in sorted(self.days):
            start = (day * _MINUTES_PER_DAY + self.start_minute) * _US_PER_MINUTE
            end = start + self.minutes * _US_PER_MINUTE
            if end <= _WEEK_US:
                out.append((start, end))
            else:  # Sunday night into Monday morning
                out.append((start, _WEEK_US))
                out.append((0, end - _WEEK_US))
        return out


def _week_position(dt: datetime) -> int:
    """Microseconds since Monday 00:00 of dt's week, in dt's own wall time."""
    minutes = (dt.weekday() * 24 + dt.hour) * 60 + dt.minute
    return minutes * _US_PER_MINUTE + dt.second * 10**6 + dt.microsecond


class Schedule:
    """A default rate plus weekly windows.

    Where windows overlap, the first one listed wins: the operator reads the list top-down,
    so a specific exception ("Wed 12:00-13:00 unlimited") goes above the general rule
    ("Mon-Fri 07:00-19:00 20MB/s"). Times are the wall time of the datetime asked about,
    so a schedule follows the hospital's clock, daylight saving included.
    """

    def __init__(self, default: float | None, windows: Sequence[Window] = ()) -> None:
        self.default = default
        self.windows = tuple(windows)
        self._spans = [(w.rate, w.spans()) for w in self.windows]
        self._boundaries = sorted({edge % _WEEK_US for _, spans in self._spans for span in spans for edge in span})

    @classmethod
    def parse(cls, default: str, windows: Sequence[str] = ()) -> Schedule:
        """From configuration strings: ``parse("unlimited", ["Mon-Fri 07:00-19:00 20MB/s"])``."""
        if isinstance(windows, str):
            windows = [windows]
        schedule = cls(parse_rate(default), [Window.parse(w) for w in windows])
        if schedule.default == 0 and all(w.rate == 0 for w in schedule.windows):
            raise ThrottleConfigError(
                f"bad schedule: default rate {default!r} and every window are paused, so nothing would ever be sent"
            )
        return schedule

    def rate_at(self, dt: datetime) -> float | None:
        """Bytes per second allowed at dt (None = unlimited)."""
        return self._rate_at_position(_week_position(dt))

    def next_change_after(self, dt: datetime) -> datetime:
        """The first instant after dt at which the rate differs from the rate at dt.

        The limiter never sleeps past it, so a new rate applies from that very instant. If
        the rate never changes, a week later (nothing changes within a whole cycle).
        """
        position = _week_position(dt)
        current = self._rate_at_position(position)
        ahead = [b for b in self._boundaries if b > position] + [b + _WEEK_US for b in self._boundaries if b <= position]
        for boundary in ahead:
            if self._rate_at_position(boundary % _WEEK_US) != current:
                return dt + timedelta(microseconds=boundary - position)
        return dt + timedelta(days=7)

    def _rate_at_position(self, position: int) -> float | None:
        for rate, spans in self._spans:
            for start, end in spans:
                if start <= position < end:
                    return rate
        return self.default

    def __repr__(self) -> str:
        return f"Schedule(default={self.default!r}, windows={[w.text for w in self.windows]!r})"


# --- clocks ---------------------------------------------------------------------------------


class Clock(Protocol):
    """Time as the limiter sees it: injectable so tests can run a week of schedule instantly."""

    def now(self) -> datetime:
        """Wall time, for the schedule."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for the token bucket."""
        ...

    def sleep(self, seconds: float) -> None:
        ...


class SystemClock:
    """The real clocks. Without ``tz``, local time with the offset in force at each call.

    Pass a ``zoneinfo.ZoneInfo`` to get exact boundaries across a daylight-saving change;
    with the default fixed offset, a boundary on the night of the change is re-evaluated at
    most ``MAX_SLEEP`` late.
    """

    def __init__(self, tz: tzinfo | None = None) -> None:
        self._tz = tz

    def now(self) -> datetime:
        return datetime.now(self._tz) if self._tz is not None else datetime.now().astimezone()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _seconds_between(earlier: datetime, later: datetime) -> float:
    """Elapsed seconds; real elapsed time for aware datetimes (DST-safe), wall time otherwise."""
    if earlier.tzinfo is not None and later.tzinfo is not None:
        return later.timestamp() - earlier.timestamp()
    return (later - earlier).total_seconds()


# --- the limiter ----------------------------------------------------------------------------


class _Turnstile:
    """First come, first served mutual exclusion for "who waits for tokens next".

    Why FIFO: a worker paying a large object chunk by chunk would otherwise usually re-grab
    a plain lock at once and keep the other workers of the site waiting until it is done.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                self._cond.wait_for(lambda: self._serving == ticket)
            except BaseException:  # interrupted while queued: give the place up, don't block the queue
                self._abandoned.add(ticket)
                self._skip_abandoned()
                raise

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            self._serving += 1
            self._skip_abandoned()

    def _skip_abandoned(self) -> None:
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()


def burst_for(rate: float) -> float:
    """Bucket size at a rate: one second's worth, at least ``MIN_BURST``."""
    return max(rate * BURST_SECONDS, float(MIN_BURST))


class RateLimiter:
    """A token bucket, driven by a ``Schedule``, shared by all worker threads of one site.

    Tokens (bytes) accrue at the current rate up to one second's worth (``burst_for``). A
    sender that falls behind (a slow disk, a busy CPU) catches up from the bucket, so the
    long-run throughput stays at the rate; any interval of length T still carries at most
    rate x T + burst bytes. The bucket starts empty, so a new limiter never opens with a burst.

    A request larger than the bucket is paid in chunks of at most the bucket size, one chunk
    per turn, first come first served, so concurrent workers share the rate fairly and a new
    rate takes effect within one chunk. A wait never sleeps past the schedule's next change:
    it wakes at the boundary and continues at the new rate from that instant. When the rate
    goes from unlimited to limited, the bucket starts empty at that moment.
    """

    def __init__(self, schedule: Schedule, clock: Clock | None = None, *, max_sleep: float = MAX_SLEEP) -> None:
        self.schedule = schedule
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._max_sleep = max_sleep
        self._lock = threading.Lock()  # guards the bucket and the counters; never held while sleeping
        self._turn = _Turnstile()  # held while one chunk is being paid for, sleeps included
        self._rate = schedule.rate_at(self.clock.now())
        self._burst = burst_for(self._rate) if self._rate is not None else float(MIN_BURST)
        self._tokens = 0.0
        self._last = self.clock.monotonic()
        self._bytes_sent = 0
        self._waited = 0.0

    def current_rate(self) -> float | None:
        """Bytes per second allowed now (None = unlimited)."""
        return self.schedule.rate_at(self.clock.now())

    @property
    def bytes_sent_total(self) -> int:
        """Bytes granted since the limiter was made."""
        with self._lock:
            return self._bytes_sent

    @property
    def seconds_waited_total(self) -> float:
        """Time the site was held back waiting for tokens (not multiplied by queued threads)."""
        with self._lock:
            return self._waited

    def acquire(self, nbytes: int) -> None:
        """Block until ``nbytes`` may be sent. Returns at once while the rate is unlimited."""
        if nbytes < 0:
            raise ValueError(f"cannot acquire a negative number of bytes ({nbytes})")
        remaining = nbytes
        while remaining > 0:
            with self._turn:
                remaining -= self._pay_one_chunk(remaining)

    def _pay_one_chunk(self, remaining: int) -> int:
        """Wait for and take one chunk of ``remaining``; returns how many bytes were granted."""
        while True:
            with self._lock:
                started = self.clock.monotonic()
                wall = self.clock.now()
                self._refill(started, wall)
                if self._rate is None:
                    self._bytes_sent += remaining
                    return remaining
                chunk = min(remaining, max(1, int(self._burst)))
                if self._tokens + _EPS_BYTES >= chunk:
                    self._tokens -= chunk
                    self._bytes_sent += chunk
                    return chunk
                needed = (chunk - self._tokens) / self._rate if self._rate > 0 else math.inf
                until_change = _seconds_between(wall, self.schedule.next_change_after(wall))
                pause = min(needed, max(until_change, MIN_BOUNDARY_SLEEP), self._max_sleep)
            self.clock.sleep(pause)
            slept = self.clock.monotonic() - started
            with self._lock:
                self._waited += max(0.0, slept)

    def _refill(self, now: float, wall: datetime) -> None:
        """Credit the time since the last look at the rate then in force, then adopt today's rate.

        Crediting at the previous rate is exact whenever someone is waiting, because waits end
        at every boundary; after an idle stretch it can only under-credit (the safe side).
        """
        elapsed = max(0.0, now - self._last)
        self._last = now
        if self._rate is None:
            self._tokens = 0.0  # unlimited: the link was in use at full speed; a new limit starts empty
        else:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        rate = self.schedule.rate_at(wall)
        if rate != self._rate:
            self._rate = rate
            if rate is not None:
                self._burst = burst_for(rate)
                self._tokens = min(self._tokens, self._burst)


# --- streaming ------------------------------------------------------------------------------


def throttled_chunks(data: bytes | bytearray | memoryview, limiter: RateLimiter, chunk: int = 256 * KIB) -> Iterator[bytes]:
    """Yield ``data`` in pieces of ``chunk`` bytes, each paid for just before it is yielded."""
    if chunk <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk}")
    view = memoryview(data).cast("B")
    for start in range(0, len(view), chunk):
        piece = view[start:start + chunk]
        limiter.acquire(len(piece))
        yield piece.tobytes()


class ThrottledReader(io.RawIOBase):
    """A read-only, seekable file over bytes that pays the limiter for every byte ``read`` returns.

    Made for ``s3.put_object(Body=ThrottledReader(blob, limiter))``: botocore and urllib3 read
    the body in blocks while sending, so the upload is paced as it streams.

    The rewind rule: every byte returned is charged, including bytes read again after a
    seek back. The reader cannot tell a pre-read (botocore hashing the body before sending)
    from the send itself, and of the two possible mistakes, charging a pre-read can only make
    replication slower than the limit, while not charging a re-read could let the real send
    go out at line rate, which is what the limit exists to prevent. A retry's resend really
    does cross the link again, so charging it is right.

    So the upload should read the body once. Over plain HTTP, botocore's defaults read it
    three times (CRC32 checksum, SigV4 payload hash, the send), giving a third of the rate.
    This reads it once over HTTP (tested against a local S3 API server) and over HTTPS
    (botocore 1.36+ source: no payload hash, checksum sent in a header):

        client = boto3.client("s3", config=Config(s3={"payload_signing_enabled": False}))
        client.put_object(..., Body=ThrottledReader(blob, limiter),
                          ChecksumSHA256=base64.b64encode(hashlib.sha256(blob).digest()).decode())

    S3 still verifies the body against the checksum on arrival. Both settings are needed:
    with only the checksum, botocore hashes the payload for the signature first even on HTTPS.
    """

    def __init__(self, data: bytes | bytearray | memoryview, limiter: RateLimiter) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._limiter = limiter
        self._position = 0
        self.bytes_charged = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all the rest if negative), after paying for them."""
        if self.closed:
            raise ValueError("read from a closed ThrottledReader")
        left = max(0, len(self._view) - self._position)
        count = left if size is None or size < 0 else min(size, left)
        if count == 0:
            return b""
        self._limiter.acquire(count)
        out = self._view[self._position:self._position + count].tobytes()
        self._position += count
        self.bytes_charged += count
        return out

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        data = self.read(len(target))
        target[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move without charging anything (the next read pays, whatever it rereads)."""
        if self.closed:
            raise ValueError("seek on a closed ThrottledReader")
        if whence == io.SEEK_SET:
            base = 0
        elif whence == io.SEEK_CUR:
            base = self._position
        elif whence == io.SEEK_END:
            base = len(self._view)
        else:
            raise ValueError(f"invalid whence ({whence})")
        position = base + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def tell(self) -> int:
        if self.closed:
            raise ValueError("tell on a closed ThrottledReader")
        return self._position
