"""Assembling a running mosaicod: catalog + store + service + Flight server (used by `serve`
and by the tests, which run the same server in-process)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.flight as flight
from sqlalchemy.engine import Engine

from .catalog import db
from .catalog.journal import Journal, Owner
from .catalog.repo import Catalog
from .config import ConfigError, Settings
from .metrics import MIDDLEWARE_KEY, MetricsMiddlewareFactory
from .recovery import recover
from .server import MosaicoFlightServer
from .service import Service
from .store.objstore import ObjectStore
from .tls import scheme, server_tls_kwargs
from .transport import security_middleware


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    store: ObjectStore
    catalog: Catalog = field(init=False)

    owner: Owner = field(init=False)
    journal: Journal = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.engine)
        self.owner = Owner(self.engine).start()  # liveness of our pending changes
        self.journal = Journal(self.engine, self.owner.key)

    @classmethod
    def open(cls, settings: Settings) -> "Runtime":
        """Connect the catalog (migrating it) and the store; raise CatalogUnavailable /
        StoreUnavailable with a one-line reason when either cannot be reached."""
        engine = db.connect(settings)
        try:
            store = ObjectStore.from_settings(settings)
        except Exception:
            engine.dispose()
            raise
        return cls(settings, engine, store)

    def close(self) -> None:
        self.owner.stop()
        self.engine.dispose()


def server_middleware(settings: Settings, runtime: Runtime) -> dict[str, flight.ServerMiddlewareFactory]:
    middleware: dict[str, flight.ServerMiddlewareFactory] = {MIDDLEWARE_KEY: MetricsMiddlewareFactory()}
    middleware.update(security_middleware(settings, runtime.engine))  # API keys, gzip responses
    return middleware


def build_server(runtime: Runtime, *, host: str | None = None, port: int | None = None) -> MosaicoFlightServer:
    settings = runtime.settings
    host = host or settings.host
    port = settings.port if port is None else port
    kwargs = server_tls_kwargs(settings)  # {} without TLS
    location = f"{scheme(settings)}://{host}:{port}"
    recover(runtime.catalog, runtime.store)  # what a crashed server left half done, before serving
    try:
        return MosaicoFlightServer(Service(settings, runtime.catalog, runtime.store, runtime.journal), location,
                                   middleware=server_middleware(settings, runtime), **kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # the port is taken, the address is not local, ...
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
