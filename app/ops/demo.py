"""``payload-stats demo``: simulated video players posting to a running service.

Each simulated device plays one video session after another, like a player:
a customer and a content (live channels and VOD catalogues, a few popular
titles and a long tail), a session length (zappers who leave within a minute,
most watching a few minutes), a bitrate from a rendition ladder, and a P2P
share that grows with the audience of its content and the age of its session.
It posts its first payload a few seconds after the start (the start-up
buffer, all from the CDN), then one every ``interval`` seconds with the bytes
since the previous one, as ``POST /stats``. Some payloads are sent twice (a
retry: answered as a duplicate, counted once), a paused player sends
zero-byte keep-alives, a payload answered 503 is sent again later, and when
many payloads fall due at once they go together as ``POST /stats/batch``, as a
relay would send them. New sessions start every second.

What was counted is printed at the end (``demo: counted ...``): the sums the
service must show for the demo's payloads.
"""

from __future__ import annotations

import heapq
import http.client
import json
import math
import random
import signal
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import click

#: Payloads due together beyond this go as batches (a relay), up to BATCH_SIZE each.
BATCH_FROM = 20
BATCH_SIZE = 500
#: Bitrate ladder: (bits per second, share of sessions).
RENDITIONS = ((800_000, 0.10), (1_600_000, 0.20), (3_000_000, 0.30), (5_000_000, 0.30),
              (8_000_000, 0.10))  # fmt: skip
RETRY_SHARE = 0.02  # payloads sent twice
PAUSE_SHARE = 0.04  # payloads after which the player pauses for a while


@dataclass(frozen=True)
class Customer:
    name: str
    weight: float  # share of the devices
    contents: tuple[str, ...]  # most popular first
    p2p_max: float  # the P2P share of a large audience
    median_session_s: float


def _catalogue() -> tuple[Customer, ...]:
    series = ("north-shore", "the-harbour", "cold-case", "winter-light", "fjord")
    return (
        Customer("acme-tv", 0.35, tuple(f"live/channel-{i}" for i in range(1, 7)), 0.80, 240),
        Customer(
            "arena-sports",
            0.20,
            ("live/match-final", "live/match-semi-1", "live/match-semi-2", "live/studio"),
            0.85,
            300,
        ),
        Customer(
            "nordic-stream",
            0.25,
            tuple(f"vod/{s}/s01e{e:02d}" for s in series for e in range(1, 11)),
            0.50,
            420,
        ),
        Customer("kidzplay", 0.12, tuple(f"vod/cartoon-{i}" for i in range(1, 41)), 0.45, 360),
        Customer("lumen-films", 0.08, tuple(f"vod/film-{i:03d}" for i in range(1, 101)), 0.30, 900),
    )


CUSTOMERS = _catalogue()


@dataclass
class Session:
    token: str
    customer: Customer
    content: str
    bitrate: float
    started: float  # wall clock, seconds
    ends: float
    last_sent: float
    sent: int = 0
    paused_for: int = 0  # keep-alives still to send


@dataclass
class Tally:
    """What the demo sent, and what the service counted of it."""

    sent: int = 0  # payloads posted, retries included
    counted: int = 0
    duplicates: int = 0  # retries answered as such
    retries: int = 0  # payloads sent twice on purpose
    keepalives: int = 0
    sessions: int = 0  # sessions started (first payload counted)
    errors: Counter = field(default_factory=Counter)
    cdn: int = 0
    p2p: int = 0
    watch_ms: int = 0

    def add_counted(self, body: dict) -> None:
        self.counted += 1
        self.cdn += body["cdn"]
        self.p2p += body["p2p"]
        self.watch_ms += body["timespan"]


class Devices:
    """The simulated players: which payload each one sends next, and when."""

    def __init__(
        self,
        count: int,
        interval: float,
        rng: random.Random,
        clock: Callable[[], float],
        now: float,
    ) -> None:
        """``clock`` is the wall clock (session durations); ``now`` and the times
        given to ``due`` are another clock's (monotonic): when payloads fall due."""
        self.interval = interval
        self.rng = rng
        self.clock = clock
        self.sessions: list[Session | None] = [None] * count
        self.audience: Counter = Counter()  # (customer, content) -> sessions playing it
        self.queue: list[tuple[float, int, int]] = []  # (due, seq, device)
        self.seq = 0
        # Start spread over one interval, as players that were already playing:
        # numbers move at once, every window gets its share of payloads, and
        # from then on sessions end and start all the time.
        for device in range(count):
            self._at(now + rng.uniform(0, interval), device)

    def _at(self, due: float, device: int) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (due, self.seq, device))

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def _pick(self, items, weights):
        return self.rng.choices(items, weights=weights)[0]

    def _start(self, device: int, now: float) -> Session:
        customer = self._pick(CUSTOMERS, [c.weight for c in CUSTOMERS])
        # Zipf-like popularity: a few titles take most of the audience.
        ranks = [1 / (i + 1) ** 1.1 for i in range(len(customer.contents))]
        content = self._pick(customer.contents, ranks)
        if self.rng.random() < 0.25:
            length = self.rng.uniform(5, 60)  # zapping
        else:
            length = min(7200.0, self.rng.lognormvariate(math.log(customer.median_session_s), 0.8))
        bitrate = self._pick([r for r, _ in RENDITIONS], [w for _, w in RENDITIONS])
        session = Session(
            token=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            customer=customer,
            content=content,
            bitrate=bitrate,
            started=now,
            ends=now + length,
            last_sent=now,
        )
        self.sessions[device] = session
        self.audience[(customer.name, content)] += 1
        return session

    def _end(self, device: int, session: Session) -> None:
        self.sessions[device] = None
        key = (session.customer.name, session.content)
        self.audience[key] -= 1
        if self.audience[key] <= 0:
            del self.audience[key]

    def due(self, now: float) -> list[tuple[int, dict, str]]:
        """Payloads due at ``now``: (device, payload, kind), kind "first", "keepalive"
        or "regular"; the devices are rescheduled."""
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, _, device = heapq.heappop(self.queue)
            session = self.sessions[device]
            wall = self.clock()
            if session is None:
                session = self._start(device, wall)
                # The first payload: the start-up buffer, a few seconds in.
                self._at(now + self.rng.uniform(1.0, 4.0) * min(1.0, self.interval / 10), device)
                continue
            out.append((device, *self._payload(session, wall)))
            if wall >= session.ends:
                self._end(device, session)
                self._at(now + self.rng.uniform(0.5, 8.0), device)  # then another video
            else:
                self._at(now + self.interval * self.rng.uniform(0.97, 1.03), device)
        return out

    def _payload(self, session: Session, wall: float) -> tuple[dict, str]:
        timespan = max(0, round((wall - session.last_sent) * 1000))
        age = wall - session.started
        kind = "regular"
        if session.sent == 0:
            kind = "first"
            # The start-up buffer: some 10 s of video, from the CDN, peers not found yet.
            total = round(session.bitrate / 8 * (10 + timespan / 1000))
            p2p = 0
        elif session.paused_for > 0:
            kind = "keepalive"
            session.paused_for -= 1
            total = p2p = 0
        else:
            total = round(session.bitrate / 8 * timespan / 1000 * self.rng.uniform(0.85, 1.15))
            peers = self.audience[(session.customer.name, session.content)] - 1
            share = session.customer.p2p_max * (1 - math.exp(-peers / 6)) * min(1.0, age / 45)
            share = min(0.95, max(0.0, share * self.rng.uniform(0.8, 1.1)))
            p2p = round(total * share)
            if self.rng.random() < PAUSE_SHARE:
                session.paused_for = self.rng.randint(1, 3)
        session.sent += 1
        session.last_sent = wall
        body = {
            "token": session.token,
            "customer": session.customer.name,
            "content": session.content,
            "timespan": timespan,
            "p2p": p2p,
            "cdn": total - p2p,
            "sessionDuration": max(0, round(age * 1000)),
        }
        return body, kind


class Poster:
    """One keep-alive HTTP connection to the service."""

    def __init__(self, url: str, token: str | None, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter(f"{url!r} is not an http:// URL", param_hint="--url")
        self.parts = parts
        self.base = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            kind = (
                http.client.HTTPSConnection
                if self.parts.scheme == "https"
                else http.client.HTTPConnection
            )
            self.conn = kind(self.parts.hostname, self.parts.port, timeout=self.timeout)
        return self.conn

    def post(self, path: str, body: object) -> tuple[int, dict]:
        """(status, JSON answer); raises OSError when the service cannot be reached."""
        data = json.dumps(body, separators=(",", ":")).encode()
        for attempt in (1, 2):  # a keep-alive connection the server closed: once more
            conn = self._connection()
            try:
                conn.request("POST", self.base + path, data, self.headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2 or isinstance(exc, ConnectionRefusedError):
                    raise OSError(str(exc) or type(exc).__name__) from None
                continue
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:
                answer = {}
            return response.status, answer if isinstance(answer, dict) else {}
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _summary(t: Tally) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(t.errors.items())) or "none"
    return (
        f"demo: sent {t.sent:,} payloads ({t.retries:,} retries sent, {t.duplicates:,} "
        f"answered as duplicates, {t.keepalives:,} keep-alives), {t.sessions:,} sessions "
        f"started; errors: {errors}"
    )


def _counted(t: Tally) -> str:
    return (
        f"demo: counted payloads={t.counted} cdn={t.cdn} p2p={t.p2p} "
        f"sessions={t.sessions} watch_ms={t.watch_ms}"
    )


class Sender:
    """Posts payloads, sends some twice (retries) once counted, resends on 503."""

    def __init__(self, poster: Poster, rng: random.Random) -> None:
        self.poster = poster
        self.rng = rng
        self.tally = Tally()
        self.resend: list[dict] = []  # answered 503 or not delivered: sent again
        self.retries: list[tuple[float, int, dict]] = []  # (due, seq, payload) heap
        self.firsts: set[int] = set()  # ids of first payloads not counted yet
        self.seq = 0

    def send(self, bodies: list[dict], now: float) -> None:
        bodies, self.resend = self.resend + bodies, []
        if len(bodies) < BATCH_FROM:
            groups = [("/stats", [b]) for b in bodies]
        else:
            groups = [
                ("/stats/batch", bodies[i : i + BATCH_SIZE])
                for i in range(0, len(bodies), BATCH_SIZE)
            ]
        for path, group in groups:
            if self._post(path, group) == len(group):
                for body in group:
                    self._counted(body, now)

    def send_retries(self, now: float) -> None:
        while self.retries and self.retries[0][0] <= now:
            _, _, body = heapq.heappop(self.retries)
            self.tally.retries += 1
            counted = self._post("/stats", [body], retry=True)
            if counted:  # cannot be: the first copy was counted
                self.tally.errors["retry_counted"] += 1

    def next_retry(self) -> float | None:
        return self.retries[0][0] if self.retries else None

    def _counted(self, body: dict, now: float) -> None:
        self.tally.add_counted(body)
        if id(body) in self.firsts:
            self.firsts.discard(id(body))
            self.tally.sessions += 1
        if self.rng.random() < RETRY_SHARE:
            # The answer "lost" on its way back: the device sends the payload again.
            self.seq += 1
            heapq.heappush(self.retries, (now + self.rng.uniform(0.2, 2.0), self.seq, body))

    def _post(self, path: str, group: list[dict], retry: bool = False) -> int:
        """How many of ``group`` the service counted (0 when not delivered)."""
        try:
            status, answer = self.poster.post(path, group[0] if path == "/stats" else group)
        except OSError:
            self.tally.errors["unreachable"] += len(group)
            if not retry:
                self.resend.extend(group)
            return 0
        self.tally.sent += len(group)
        if status == 200:
            self.tally.duplicates += answer.get("duplicates", 0)
            counted = answer.get("accepted", 0)
            if counted != len(group) and not retry:
                # An earlier copy whose answer was lost is counted already.
                self.tally.errors["counted_before"] += len(group) - counted
            return counted
        if status == 503 and not retry:
            self.tally.errors["503"] += len(group)
            self.resend.extend(group)  # the same payloads: counted once
            return 0
        self.tally.errors[str(status)] += len(group)
        return 0


def run(
    url: str,
    devices: int,
    duration: float | None,
    interval: float,
    token: str | None,
    seed: int | None,
    report_every: float = 30.0,
    echo: Callable[[str], None] = lambda line: click.echo(line, err=True),
) -> Tally:
    """Post until ``duration`` seconds have passed (None: until SIGTERM/SIGINT)."""
    rng = random.Random(seed)
    poster = Poster(url, token)
    sender = Sender(poster, rng)
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _wait_for_service(poster, url, stopping, echo)
        started = time.monotonic()
        sim = Devices(devices, interval, rng, time.time, started)
        if not stopping:
            echo(
                f"demo: {devices} devices posting to {url} (a payload every {interval:g} s "
                "each, new sessions every second)"
            )
        next_report = started + report_every
        while not stopping:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            bodies = []
            for _, body, kind in sim.due(now):
                if kind == "keepalive":
                    sender.tally.keepalives += 1
                elif kind == "first":
                    sender.firsts.add(id(body))
                bodies.append(body)
            sender.send(bodies, now)
            sender.send_retries(now)
            if now >= next_report:
                echo(_summary(sender.tally))
                next_report = now + report_every
            if sender.resend:
                wake = now + 0.5
            else:
                wake = min(d for d in (sim.next_due(), sender.next_retry(), now + 1) if d)
            if duration is not None:
                wake = min(wake, started + duration)
            time.sleep(max(0.0, wake - time.monotonic()))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        poster.close()
    echo(_summary(sender.tally))
    echo(_counted(sender.tally))
    return sender.tally


def _wait_for_service(
    poster: Poster, url: str, stopping: list[int], echo: Callable[[str], None]
) -> None:
    """Until the service answers (serve starts the demo beside its web process)."""
    started = time.monotonic()
    told = False
    while not stopping:
        try:
            conn = poster._connection()
            conn.request("GET", poster.base + "/healthz")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return
        except (OSError, http.client.HTTPException):
            poster.close()
        if not told and time.monotonic() - started > 5:
            echo(f"demo: waiting for the service at {url} ...")
            told = True
        time.sleep(0.2)


@click.command("demo")
@click.option(
    "--devices", default=300, show_default=True, type=click.IntRange(1, 100_000),
    help="Simulated players.",
)  # fmt: skip
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
    help="Stop after this long [until Ctrl-C].",
)  # fmt: skip
@click.option(
    "--url", default=None, metavar="URL",
    help="The service [http:// and STATS_BIND, http://127.0.0.1:8000].",
)  # fmt: skip
@click.option(
    "--interval", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
    metavar="SECONDS", help="Seconds between two payloads of a device.",
)  # fmt: skip
@click.option("--seed", type=int, help="Seed of the random choices (the same run twice).")
def demo_command(
    devices: int, duration: float | None, url: str | None, interval: float, seed: int | None
) -> None:
    """Simulated video players posting to a running service, so numbers move at once.

    Sends STATS_INGEST_TOKEN as a bearer token when it is set. Ctrl-C stops it;
    it prints what was sent and what the service counted.
    """
    import os

    from . import serving

    if url is None:
        bind = os.environ.get("STATS_BIND", "").strip() or "127.0.0.1:8000"
        try:
            url = serving.probe_url(bind).removesuffix("/healthz")
        except serving.AddressError as exc:
            raise click.BadParameter(str(exc), param_hint="STATS_BIND") from None
    token = os.environ.get("STATS_INGEST_TOKEN", "").strip() or None
    tally = run(url, devices, duration, interval, token, seed)
    if tally.sent == 0 and tally.errors:
        sys.exit(1)
