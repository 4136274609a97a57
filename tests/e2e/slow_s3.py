"""An S3 endpoint in front of the moto server that, while armed, holds every checkpoint write for a while: a
checkpoint upload that takes longer than Kubernetes' default 30 s grace period, as a real model's does."""

from __future__ import annotations

import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.s3proxy import relay

KEEPALIVE_SECONDS = 5


class SlowCheckpoints(ThreadingHTTPServer):
    """Forwards every request to `upstream`; while `armed` is set, a PUT or POST under `/checkpoints/` waits
    `delay` seconds first."""

    daemon_threads = True

    def __init__(self, host: str, upstream: str, delay: float) -> None:
        super().__init__((host, 0), _Forward)
        self.upstream = urllib.parse.urlsplit(upstream)
        self.delay = delay
        self.armed = threading.Event()
        self.held: list[str] = []  # the requests held, for the test's messages

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A pod killed mid-request (the point of the test) is one line, not a traceback."""
        print(f"slow S3: a request from {client_address[0]} ended early")

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> SlowCheckpoints:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()
        self.server_close()


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowCheckpoints

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        if self.server.armed.is_set() and self.command in ("PUT", "POST") and "/checkpoints/" in self.path:
            self.server.held.append(self.path)
            self._hold(self.server.delay)
        relay(self, (self.server.upstream.hostname or "", self.server.upstream.port or 80), body, timeout=120)

    def _hold(self, seconds: float) -> None:
        """Wait before forwarding; an interim 102 every few seconds keeps the client's read timeout (s3fs: 15 s)
        from firing, as a large upload's steady progress would."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, KEEPALIVE_SECONDS))
            if left > KEEPALIVE_SECONDS:
                self.wfile.write(b"HTTP/1.1 102 Processing\r\n\r\n")
                self.wfile.flush()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *_: object) -> None:
        pass
