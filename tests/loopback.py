"""Loopback HTTP for the download tests: a request handler served on 127.0.0.1 for one block."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Files under `directory` (bind it with functools.partial), without a log line per request."""

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler: Callable[..., Any]) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 from a daemon thread; yields the base URL, "http://127.0.0.1:PORT/".

    Closing does not wait for requests still being answered (block_on_close off): a handler stuck
    on a client that went away cannot hold the test, and so CI, forever.
    """
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
