"""The HTTP API served for tests: a set-up relay, its console (`create_app`, which includes
the API's router), an administrator with a token, and a real uvicorn server on 127.0.0.1
and a free port, in a thread of its own.

    with serve_api(tmp_path, keys, members) as api:
        api.client.get("/api/v1/advisories")     # httpx, the bearer token already set
        api.anonymous.get(...)                   # the same server without a token

Stopping the server (leaving the block) lets open requests finish, then closes its socket,
the clients and the console.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from relay.app import admins
from relay.web.app import create_app
from relay.web.context import Console
from tests.support.cli import CliRelay, set_up
from tests.support.keys import KeyFactory

ADMIN = "alice"
PASSWORD = "correct horse battery staple"
SETUP = "cli:setup"


def api_app(console: Console) -> FastAPI:
    """The console's application, which includes the API's router."""
    return create_app(console)


class Server:
    """uvicorn serving `app` on 127.0.0.1, on a port bound before it starts."""

    def __init__(self, app: FastAPI) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


@dataclass
class Api:
    relay: CliRelay
    console: Console
    server: Server
    token: str
    token_id: int
    client: httpx.Client  # with the token
    anonymous: httpx.Client  # without one

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def serve_api(
    root: Path, keys: KeyFactory, members: list[tuple[str, str, str]], *, extra: str = ""
) -> Iterator[Api]:
    """A relay set up with `members` (tests/support/cli.py), served over HTTP."""
    relay = set_up(root, keys, members, extra=extra)
    console = Console.open(relay.settings)
    try:
        admins.add_admin(console.db, ADMIN, PASSWORD, SETUP)
        view, token = admins.issue_token(console.db, ADMIN, SETUP, label="tests")
        server = Server(api_app(console))
        server.start()
        try:
            headers = {"Authorization": f"Bearer {token}"}
            with (
                httpx.Client(base_url=server.url, headers=headers, timeout=60) as client,
                httpx.Client(base_url=server.url, timeout=60) as anonymous,
            ):
                yield Api(relay, console, server, token, view.id, client, anonymous)
        finally:
            server.stop()
    finally:
        console.close()
        relay.db.dispose()
