"""The listen address of serve: parsed, probed, checked before anything starts."""

from __future__ import annotations

import socket

import pytest

from payload_stats.ops import serving


@pytest.mark.parametrize(
    ("bind", "host", "port", "probe"),
    [
        ("127.0.0.1:8000", "127.0.0.1", 8000, "http://127.0.0.1:8000/healthz"),
        ("0.0.0.0:8001", "0.0.0.0", 8001, "http://127.0.0.1:8001/healthz"),
        ("[::]:8002", "::", 8002, "http://[::1]:8002/healthz"),
        ("[::1]:8003", "::1", 8003, "http://[::1]:8003/healthz"),
        ("localhost:8004", "localhost", 8004, "http://localhost:8004/healthz"),
    ],
)
def test_split_and_probe(bind, host, port, probe):
    assert serving.split(bind) == (host, port)
    assert serving.probe_url(bind) == probe


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1", ":8000", "host:0", "host:65536", "h:x"])
def test_an_address_that_is_not_host_port(bind):
    with pytest.raises(serving.AddressError, match="use HOST:PORT, e.g. 127.0.0.1:8000"):
        serving.split(bind)


def test_a_port_in_use_and_a_free_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(serving.AddressError) as caught:
            serving.check_address(f"127.0.0.1:{port}")
        assert str(caught.value) == f"port {port} is in use; use --bind or STATS_BIND"
    serving.check_address(f"127.0.0.1:{port}")  # closed: free again


def test_the_announcer_announces_once_when_the_address_answers(monkeypatch):
    answered = iter([False, False, True, True])
    monkeypatch.setattr(serving, "answers", lambda url: next(answered))
    now = [0.0]
    said, late = [], []
    tick = serving.Announcer(
        "127.0.0.1:9", lambda: said.append("up"), late.append, interval=1, patience=0.5,
        clock=lambda: now[0],
    )  # fmt: skip
    for t in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0):
        now[0] = t
        tick()
    assert said == ["up"]
    assert late == [1.0]
