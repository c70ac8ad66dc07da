"""Servers that misbehave the way real ones do, on loopback.

- `SilentServer` accepts TCP connections and never answers (a hung process,
  a load balancer in front of nothing).
- `PartitionProxy` forwards to a real server until `freeze()`: from then on
  it holds every byte in both directions, and accepts new connections
  without forwarding them, as a network partition looks to a client (no
  reset, no error: just silence). `thaw()` heals it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

HOST = "127.0.0.1"


class SilentServer:
    def __init__(self) -> None:
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)  # never read, never answered

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for conn in self._held:
            conn.close()


class PartitionProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lost = 0
        self._on_lost: Callable[[], object] | None = None
        self._marker: bytes | None = None
        self._lost_lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_answers(
        self, count: int = 1, then: Callable[[], object] | None = None
    ) -> None:
        """The next `count` answers from upstream are dropped and the client's
        connection is reset: a request that arrived, an answer that did not.
        `then` runs after each is dropped, before the client learns of it."""
        with self._lost_lock:
            self._lost = count
            self._on_lost = then

    def _losing(self) -> bool:
        with self._lost_lock:
            if self._lost <= 0:
                return False
            self._lost -= 1
            then = self._on_lost
        if then is not None:
            then()
        return True

    def freeze(self) -> None:
        self._flowing.clear()

    def freeze_on(self, marker: bytes) -> None:
        """Partition when a request carrying `marker` (a note, a key)
        arrives: that request and everything after it are held."""
        with self._lost_lock:
            self._marker = marker

    def _gate(self, data: bytes) -> None:
        with self._lost_lock:
            if self._marker is not None and self._marker in data:
                self._marker = None
                self._flowing.clear()
                return

    def thaw(self) -> None:
        self._flowing.set()

    def refuse_new(self) -> None:
        """Stop listening: a new connection is refused (a store gone down);
        connections already made go on."""
        with contextlib.suppress(OSError):  # wakes the accept under way
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a partition forwards nothing, not even a connect
        if self._closed.is_set():
            return
        try:
            upstream = socket.create_connection((HOST, self.upstream_port))
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        for source, target, answers in (
            (client, upstream, False),
            (upstream, client, True),
        ):
            threading.Thread(
                target=self._pump, args=(source, target, answers), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, answers: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(65536)
                if not answers:
                    self._gate(data)
                self._flowing.wait()  # held, not dropped, while partitioned
                if not data or self._closed.is_set():
                    break
                if answers and self._losing():
                    # RST, not FIN: the client sees its connection reset. The
                    # shutdown wakes the other direction's pump, blocked on it.
                    linger = struct.pack("ii", 1, 0)
                    target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    target.shutdown(socket.SHUT_RDWR)
                    target.close()
                    source.close()
                    return
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def partition_proxy(upstream_port: int) -> Iterator[PartitionProxy]:
    proxy = PartitionProxy(upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()


def redirect(name: str, options: dict[str, str], port: int) -> dict[str, str]:
    """`options` of backend `name`, pointed at `port` on loopback instead."""
    moved = dict(options)
    if name == "fivemethods":  # the test plugin, over the store it names
        return redirect(options["store"], options, port)
    if name == "redis":
        moved["url"] = f"redis://{HOST}:{port}/0"
    elif name == "postgresql":
        moved["connection"] = f"postgresql://postgres@{HOST}:{port}/postgres"
    elif name == "dynamodb":
        moved["endpoint"] = f"http://{HOST}:{port}"
    elif name == "etcd":
        moved["host"], moved["port"] = HOST, str(port)
    elif name == "http":
        moved["url"] = f"http://{HOST}:{port}"
    else:
        raise ValueError(f"{name} has no network address")
    return moved
