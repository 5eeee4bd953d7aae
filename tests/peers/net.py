"""Loopback addresses and ports that parallel test runs do not share."""

from __future__ import annotations

import random
import socket
import time


def free_loopback_block() -> str:
    """Return a random /24 prefix inside 127.0.0.0/8, such as ``"127.23.41"``.

    Linux answers on every 127.x.y.z address without configuration, so each test run picks its own
    block and its listeners cannot collide with another run's. 127.0.0.x is avoided (daemons and
    the system resolver live there), and so are octet values 0 and 255.
    """
    rng = random.SystemRandom()
    return f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}"


def free_port(host: str, kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """Bind port 0 on `host`, close the socket and return the port the kernel chose."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_tcp_udp(host: str) -> int:
    """Return a port that is free on `host` for UDP and TCP both (DNS servers need both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def wait_for_tcp(host: str, port: int, deadline: float) -> bool:
    """Poll until `host:port` accepts a TCP connection or the monotonic `deadline` passes."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
