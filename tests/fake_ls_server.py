"""The fake Label Studio over real HTTP on loopback, for tests that run labelloop processes."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tests.fake_labelstudio import FakeLabelStudio


class FakeLabelStudioServer:
    """Serves ``fake.handle`` on 127.0.0.1. While ``images_open`` is clear, image downloads
    wait for it (bounded), so a test can hold a job in flight and kill its worker."""

    def __init__(self, fake: FakeLabelStudio) -> None:
        self.fake = fake
        self.images_open = threading.Event()
        self.images_open.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                request = httpx.Request(
                    self.command,
                    f"http://{self.headers.get('host')}{self.path}",
                    headers=dict(self.headers.items()),
                    content=self.rfile.read(length) if length else b"",
                )
                if request.url.path.startswith("/data/"):
                    server.images_open.wait(timeout=120)
                response = server.fake.handle(request)
                try:
                    self.send_response(response.status_code)
                    for name in ("content-type",):
                        if name in response.headers:
                            self.send_header(name, response.headers[name])
                    self.send_header("content-length", str(len(response.content)))
                    self.end_headers()
                    self.wfile.write(response.content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client (a killed worker) is gone

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @contextmanager
    def running(self) -> Iterator["FakeLabelStudioServer"]:
        self._thread.start()
        try:
            yield self
        finally:
            self.images_open.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
