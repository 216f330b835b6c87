"""A model server run by uvicorn in a thread on a free loopback port, for the serving tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from serving.server import ModelServer, bind, create_app


@contextmanager
def running(server: ModelServer) -> Iterator[str]:
    """Serve ``server`` on 127.0.0.1 in a thread; yields the base URL; closes it after."""
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(server), lifespan="off", access_log=False)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(10)
        server.close()
