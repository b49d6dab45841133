"""Flight server middlewares for transport security: API-key auth and gzip responses.

``security_middleware(settings, engine)`` is the one call the server makes; it returns the
``middleware=`` mapping for ``FlightServerBase.__init__``:

* ``"auth"`` (when ``MOSAICOD_API_KEY_ENABLED``): ``auth.AuthMiddlewareFactory`` — refuses calls
  without a usable key; endpoints read ``context.get_middleware("auth").permissions``.
* ``"gzip"`` (when ``MOSAICOD_GZIP_ENABLED``): asks gRPC to gzip every response message.

Compressed *requests* need nothing: gRPC C++ (under pyarrow) decompresses ``grpc-encoding: gzip``
/ ``deflate`` messages from any client.  pyarrow exposes no server-builder compression option,
but a server middleware may add initial metadata, and the gRPC C++ server treats the internal
metadata key ``grpc-internal-encoding-request`` exactly like ``ServerContext::
set_compression_algorithm``: the call's responses are compressed with that algorithm whenever
the client advertises it in ``grpc-accept-encoding`` (every gRPC client does by default,
including the SDK's), and sent uncompressed otherwise.
"""

from __future__ import annotations

import pyarrow.flight as flight

from .auth import AuthMiddlewareFactory
from .config import Settings

GRPC_COMPRESSION_REQUEST_KEY = "grpc-internal-encoding-request"


class _GzipMiddleware(flight.ServerMiddleware):
    def sending_headers(self):
        return {GRPC_COMPRESSION_REQUEST_KEY: "gzip"}


class GzipMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Compress every response of every call with gzip."""

    def start_call(self, info, headers):
        return _GzipMiddleware()


def security_middleware(settings: Settings, engine=None) -> dict[str, flight.ServerMiddlewareFactory]:
    """The ``middleware=`` mapping for the Flight server (may be empty)."""
    out: dict[str, flight.ServerMiddlewareFactory] = {}
    if settings.api_key_enabled:
        if engine is None:
            raise ValueError("API keys are enabled: security_middleware needs the catalog engine")
        out["auth"] = AuthMiddlewareFactory(engine)
    if settings.gzip_enabled:
        out["gzip"] = GzipMiddlewareFactory()
    return out
