"""A loopback HTTP proxy in front of an S3 server (moto) that injects object-store faults on demand.

Faults are counted, not drawn: `slow_down(2, method="PUT", key="manifest")` answers the next two matching
requests with a real S3 `503 SlowDown` error, `reset(1)` resets the connection of the next request before
any answer, `stall(1, seconds=30)` holds the next request that long before forwarding it; a client with a
shorter read timeout gives up first, and a request whose client hung up is never forwarded. Requests that
no fault matches pass through unchanged. `chaos(seed)` adds a seeded random schedule on top (same seed and
same request order, same faults). Every fault fired is in `log`, as `Fired(number, kind, method, path)`.

Use it in-process (`with S3FaultProxy(upstream) as proxy: ...`), or as a process in front of a moto
server elsewhere: `python -m tests.s3proxy --upstream http://127.0.0.1:5000 [--port P] [--seed S]`; then
`POST /_faults/` with `{"kind": "reset", "count": 2, "method": "PUT", "key": "latest"}` adds a fault and
`GET /_faults/` returns the log as JSON. The control path is never forwarded.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import random
import re
import select
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field

CONTROL = "/_faults/"
KINDS = ("reset", "slowdown", "stall")
SLOW_DOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message><Resource>{resource}</Resource>"
    "<RequestId>s3proxy</RequestId></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}


def relay(
    handler: http.server.BaseHTTPRequestHandler, upstream: tuple[str, int], body: bytes, timeout: float = 60
) -> None:
    """Send the handler's request (with `body`) to the upstream server and its answer back to the client,
    hop-by-hop headers dropped and Content-Length set once."""
    connection = http.client.HTTPConnection(*upstream, timeout=timeout)
    try:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        connection.request(handler.command, handler.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        handler.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                handler.send_header(key, value)
        length = response.getheader("Content-Length") if handler.command == "HEAD" else None
        handler.send_header("Content-Length", length or str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
    finally:
        connection.close()


@dataclass
class Fault:
    """`count` more requests whose method equals `method` and whose path matches the `key` regex get `kind`."""

    kind: str
    count: int = 1
    method: str | None = None
    key: str | None = None
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.count > 0
            and (self.method is None or self.method.upper() == method)
            and (self.key is None or re.search(self.key, path) is not None)
        )


@dataclass(frozen=True)
class Fired:
    number: int  # the request's number since the proxy started (1-based)
    kind: str
    method: str
    path: str


@dataclass
class Chaos:
    """A seeded schedule: each request gets a fault with `probability`, of a kind drawn from `kinds`."""

    seed: int
    probability: float = 0.2
    kinds: tuple[str, ...] = KINDS
    stall_seconds: float = 5.0
    limit: int | None = None  # at most this many chaos faults
    rng: random.Random = field(init=False)
    fired: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self) -> Fault | None:
        hit, kind = self.rng.random() < self.probability, self.rng.choice(self.kinds)
        if not hit or (self.limit is not None and self.fired >= self.limit):
            return None
        self.fired += 1
        return Fault(kind, seconds=self.stall_seconds)


class S3FaultProxy:
    """The proxy: `endpoint` is its URL; start and stop it with `with` (or `start()` / `close()`)."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults: list[Fault] = []
        self.log: list[Fired] = []
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, faulted or not
        self.requests = 0
        self.chaos_schedule: Chaos | None = None
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3proxy", daemon=True)
        self.endpoint = f"http://{host}:{self._server.server_address[1]}"

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, fault: Fault) -> Fault:
        if fault.kind not in KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r} (one of {', '.join(KINDS)})")
        with self._lock:
            self.faults.append(fault)
        return fault

    def reset(self, count: int = 1, method: str | None = None, key: str | None = None) -> Fault:
        """Reset the connection (TCP RST) of the next `count` matching requests, before any answer."""
        return self.add(Fault("reset", count, method, key))

    def slow_down(self, count: int = 1, method: str | None = None, key: str | None = None) -> Fault:
        """Answer the next `count` matching requests with 503 SlowDown (S3's XML error body)."""
        return self.add(Fault("slowdown", count, method, key))

    def stall(self, count: int = 1, seconds: float = 30.0, method: str | None = None, key: str | None = None) -> Fault:
        """Hold the next `count` matching requests `seconds` before forwarding them."""
        return self.add(Fault("stall", count, method, key, seconds))

    def chaos(self, seed: int, probability: float = 0.2, **options: object) -> Chaos:
        """A seeded random schedule on top of the counted faults (which go first)."""
        self.chaos_schedule = Chaos(seed, probability, **options)  # type: ignore[arg-type]
        return self.chaos_schedule

    def clear(self) -> None:
        """Drop every pending fault and the chaos schedule (the log stays)."""
        with self._lock:
            self.faults.clear()
            self.chaos_schedule = None

    def fired(self, kind: str | None = None) -> list[Fired]:
        with self._lock:
            return [f for f in self.log if kind is None or f.kind == kind]

    def pending(self) -> int:
        with self._lock:
            return sum(f.count for f in self.faults)

    def _next_fault(self, method: str, path: str) -> Fault | None:
        """The fault for this request (counted ones first), logged; None to pass it through."""
        with self._lock:
            self.requests += 1
            self.seen.append((method, path))
            chosen = next((f for f in self.faults if f.matches(method, path)), None)
            if chosen is not None:
                chosen.count -= 1
            elif self.chaos_schedule is not None:
                chosen = self.chaos_schedule.draw()
            if chosen is not None:
                self.log.append(Fired(self.requests, chosen.kind, method, path))
            return chosen


def _handler(proxy: S3FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        owner = proxy

    return Handler


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: S3FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # quiet: the fault log says what matters
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path.startswith(CONTROL):
            return self._control(body)
        fault = self.owner._next_fault(self.command, path)
        if fault is not None and fault.kind == "reset":
            return self._reset()
        if fault is not None and fault.kind == "slowdown":
            return self._answer(503, SLOW_DOWN_BODY.format(resource=path).encode(), "application/xml")
        if fault is not None and fault.kind == "stall" and not self._stall(fault.seconds):
            return None
        self._forward(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def _forward(self, body: bytes) -> None:
        try:
            relay(self, self.owner.upstream, body)
        except OSError:  # the client gave up (a stall past its read timeout): nothing to answer
            self.close_connection = True

    def _stall(self, seconds: float) -> bool:
        """Hold the request `seconds`; False (and nothing forwarded) if the client hung up meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.1))
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                self.close_connection = True
                return False
        return True

    def _answer(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _control(self, body: bytes) -> None:
        if self.command == "POST":
            try:
                self.owner.add(Fault(**json.loads(body)))
            except (TypeError, ValueError) as error:
                return self._answer(400, str(error).encode(), "text/plain")
        log = [asdict(f) for f in self.owner.fired()]
        self._answer(200, json.dumps({"pending": self.owner.pending(), "log": log}).encode(), "application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the S3 server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, help="add a seeded chaos schedule")
    parser.add_argument("--probability", type=float, default=0.2)
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    args = parser.parse_args()
    proxy = S3FaultProxy(args.upstream, args.host, args.port)
    if args.seed is not None:
        proxy.chaos(args.seed, args.probability, stall_seconds=args.stall_seconds)
    print(proxy.endpoint, flush=True)
    proxy._server.serve_forever()


if __name__ == "__main__":
    main()
