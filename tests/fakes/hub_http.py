"""What the Hugging Face and Replicate fakes share: a FakeAPIServer without machines, that reads chunked bodies.

The hub SDKs stream file uploads (``PUT`` of an LFS object, multipart file
uploads) with ``Transfer-Encoding: chunked`` when they cannot tell a file's
length; the shared handler of :mod:`tests.fakes` reads ``Content-Length``
only, so these fakes decode chunked bodies first and then hand the request
to it unchanged. Neither fake backs anything with an sshd: no pool.
"""

from __future__ import annotations

import io
import threading
from http.server import ThreadingHTTPServer

from . import FakeAPIServer, _make_handler


def read_chunked(stream) -> bytes:
    body = bytearray()
    while True:
        size_line = stream.readline().strip()
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            while stream.readline().strip():  # trailers, then the empty line
                pass
            return bytes(body)
        body += stream.read(size)
        stream.readline()  # the CRLF after each chunk


class HubFake(FakeAPIServer):
    """A fake API on 127.0.0.1 with no instances behind it; started and stopped like every other fake."""

    def __init__(self, *, api_key: str):
        super().__init__(pool=None, api_key=api_key)

    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        base = _make_handler(self)

        class Handler(base):  # type: ignore[misc, valid-type]
            def _serve_any(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return base._serve(self)
                body = read_chunked(self.rfile)
                original = self.rfile
                del self.headers["Transfer-Encoding"]
                self.headers["Content-Length"] = str(len(body))
                self.rfile = io.BytesIO(body)
                try:
                    base._serve(self)
                finally:
                    self.rfile = original

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve_any

        server = ThreadingHTTPServer((self.host, 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()
        self.base_url = f"http://{self.host}:{server.server_address[1]}"
        return self.base_url
