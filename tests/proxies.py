"""A TCP proxy on 127.0.0.1 for fault tests: an endpoint that goes away part-way, or comes up late."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` that forwards ``budget`` bytes of requests, then
    cuts every open connection and refuses new ones: an endpoint that goes away mid-upload."""

    def __init__(self, target: str, budget: float = float("inf"), port: int = 0):
        url = urlparse(target)
        self.target, self.budget, self.sent, self.cut = (url.hostname, url.port), budget, 0, False
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.cut:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                conn.close()
                continue
            threading.Thread(target=self._pump, args=(conn, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self.lock:
                        self.sent += len(data)
                        self.cut = self.cut or self.sent > self.budget
                if self.cut:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.server.close()
