"""``sigillo serve``: the roles (smtp, worker, portal) in one event loop, stopped by a signal."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Generator, Iterable
from contextlib import contextmanager, suppress

import structlog
import uvicorn

from sigillo.config import Settings
from sigillo.gateway import tlsrpt
from sigillo.gateway.listener import start_listener
from sigillo.gateway.worker import Worker
from sigillo.lifecycle import run_retention
from sigillo.portal.app import create_app
from sigillo.store import migrate
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store

log = structlog.get_logger("sigillo.server")

ROLES = ("smtp", "worker", "portal")


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: signals belong to ``serve``, which stops every role."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def portal_socket(host: str, port: int) -> socket.socket:
    """The portal's listening socket, shared through SO_REUSEPORT: several ``serve --role
    portal`` processes (same user) on one address split the connections between them, which
    is how the portal uses more than one core."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def retention_job(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """The retention job: at start, then every ``[retention] interval`` until ``stop``. A
    failed run (the database away) is logged and the next one tries again."""
    interval = settings.retention.interval.total_seconds()
    while not stop.is_set():
        try:
            report = await run_retention(store, settings, stop=stop)
        except Exception as exc:
            log.error("retention_failed", error=(str(exc) or repr(exc)).splitlines()[0])
        else:
            log.info(
                "retention_done",
                **report.counts(),
                wal_truncated=report.wal_truncated,
                complete=report.complete,
            )
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def serve(settings: Settings, roles: Iterable[str]) -> None:
    roles = set(roles)
    # The event loop, the commit thread and the database reader threads pass the GIL back
    # and forth on every query; at the default 5 ms switch interval each hand-off can stall
    # a reply by that long (measured: 40 ms median to read one row under load).
    sys.setswitchinterval(0.0005)
    store = Store(settings.storage.database_url)
    keyring = Keyring.load_or_create(settings.storage.key_file)
    if settings.storage.auto_migrate:
        await migrate.upgrade(store)
        log.info("schema_ready", revision=(await migrate.revision(store))[0])
    else:
        current, head = await migrate.revision(store)
        if current != head:
            raise RuntimeError(
                f"database at revision {current}, code needs {head}: run sigillo db upgrade"
            )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks: list[asyncio.Task[None]] = []
    worker = Worker(settings, store, keyring) if "worker" in roles else None
    smtp_server = None
    if "smtp" in roles:
        on_queued = worker.notify_queued if worker else None
        smtp_server = await start_listener(settings, store, keyring, on_queued)
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run(stop)))
        tasks.append(asyncio.create_task(retention_job(settings, store, stop)))
        tasks.append(asyncio.create_task(tlsrpt.report_job(settings, store, keyring, stop)))
    portal = None
    if "portal" in roles:
        host, port = settings.portal.listen_address
        proxies = settings.portal.trusted_proxies
        app = create_app(
            settings, store, keyring, on_queued=worker.notify_queued if worker else None
        )
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            # X-Forwarded-For is believed only from configured proxies: a client that could
            # name its own address would escape sign-in throttling and mislead the audit log.
            proxy_headers=bool(proxies),
            forwarded_allow_ips=",".join(proxies) or None,
        )
        portal = EmbeddedUvicorn(config)
        tasks.append(asyncio.create_task(portal.serve(sockets=[portal_socket(host, port)])))
        log.info("portal_listening", address=f"{host}:{port}")
    log.info("serving", roles=sorted(roles))
    await stop.wait()
    log.info("stopping")
    if smtp_server is not None:
        smtp_server.close()
        await smtp_server.wait_closed()
    if portal is not None:
        portal.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()
