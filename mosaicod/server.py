"""Arrow Flight endpoints.  Thin: parse the wire format (``wirejson`` for action bodies,
``descriptors`` for commands, ``tickets`` for DoGet tickets), check permissions, dispatch to
``service.Service``, convert errors through the one table in ``errors``."""

from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.flight as flight

from . import descriptors, errors, metrics
from .logs import get as get_logger
from .permissions import ACTION_PERMISSIONS, RPC_PERMISSIONS, Permission, camel
from .service import STOPPING, Service
from .tickets import TopicTicket
from .wirejson import parse_object

log = get_logger(__name__)

ALL_PERMISSIONS = Permission.READ | Permission.WRITE | Permission.DELETE


def endpoint(rpc: str) -> Callable:
    """The error boundary of an RPC: every failure leaves as the Flight error of its kind
    (``errors.to_wire``); internal ones are logged with their traceback under an error id."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(self, context, *args):
            try:
                return fn(self, context, *args)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - re-raised as a Flight error
                raise errors.to_wire(exc, rpc) from None
        return inner
    return wrap


def _guard_stream(it: Iterator, rpc: str) -> Iterator:
    """The same boundary for every item of a streamed response."""
    try:
        yield from it
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        raise errors.to_wire(exc, rpc) from None


def _put_batches(reader: flight.MetadataRecordBatchReader, context) -> Iterator[pa.RecordBatch]:
    """The record batches of a DoPut stream, until its clean end.  A client that goes away
    (killed process, reset connection) ends the stream like a clean end does, but with the call
    cancelled: that is raised, as is any other broken stream."""
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            if context.is_cancelled():
                raise errors.MosaicoError(errors.Kind.CANCELLED,
                                          "the client went away before the end of the stream") from None
            return
        if chunk.data is None:
            raise errors.MosaicoError(errors.Kind.ABORTED, "Unsupported stream message, stream aborted")
        yield chunk.data


def _broken_reason(exc: BaseException) -> str:
    """One line saying why an upload stream broke (for the topic notification and the log)."""
    if isinstance(exc, errors.MosaicoError):
        return exc.message
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "the server was stopped"
    if isinstance(exc, flight.FlightError):  # reading the client's stream failed
        return f"the stream broke ({errors.first_line(exc)})"
    return f"server-side failure ({type(exc).__name__}, see the server log)"  # no paths or SQL


def _result(action: str, payload: Any) -> flight.Result:
    return flight.Result(json.dumps({"action": action, "response": payload}).encode())


class MosaicoFlightServer(flight.FlightServerBase):
    def __init__(self, service: Service, location: str, *,
                 middleware: dict[str, flight.ServerMiddlewareFactory] | None = None,
                 **flight_kwargs: Any):
        errors.install_wire_formatting()  # no traceback in any status detail (see errors.py)
        super().__init__(location, middleware=middleware or None, **flight_kwargs)
        self.service = service
        self._stopping = threading.Event()  # set by shutdown(): running reads and uploads end at their next step
        self._uploads: set = set()  # the running DoPut streams (service.Upload), for shutdown()
        self._uploads_lock = threading.Lock()
        self._actions: dict[str, Callable[[dict], Any]] = {
            "info": service.info,
            "version": service.info,  # the older dialect's name of `info`
            "sequence_create": service.sequence_create,
            "session_create": service.session_create,
            "topic_create": service.topic_create,
            "session_finalize": service.session_finalize,
            "session_delete": service.session_delete,
            "sequence_delete": service.sequence_delete,
            "topic_delete": service.topic_delete,
            "sequence_notification_create": functools.partial(service.notification_create, "sequence"),
            "topic_notification_create": functools.partial(service.notification_create, "topic"),
            "sequence_notification_list": functools.partial(service.notification_list, "sequence"),
            "topic_notification_list": functools.partial(service.notification_list, "topic"),
            "sequence_notification_purge": functools.partial(service.notification_purge, "sequence"),
            "topic_notification_purge": functools.partial(service.notification_purge, "topic"),
            "query": service.query,
        }
        self._streaming_actions = {"topic_filter_clusterize": service.clusterize,
                                   "topic_filter_intersect": service.intersect}

    # -- permissions --------------------------------------------------------------------------
    @staticmethod
    def _require(context: flight.ServerCallContext, needed: Permission, action: str | None = None) -> None:
        mw = context.get_middleware("auth")
        granted = getattr(mw, "permissions", ALL_PERMISSIONS) if mw is not None else ALL_PERMISSIONS
        if needed & ~granted:
            if action is not None:
                raise errors.unauthorized(
                    f"provided API key has not enough permissions to execute {camel(action)} action")
            names = "/".join(p.name for p in (Permission.READ, Permission.WRITE, Permission.DELETE) if p & needed)
            raise errors.unauthorized(f"provided API key does not have {names} permissions")

    # -- actions ------------------------------------------------------------------------------
    @endpoint("do_action")
    def do_action(self, context, action: flight.Action):
        name = action.type
        handler = self._actions.get(name)
        streaming = self._streaming_actions.get(name)
        if handler is None and streaming is None:
            raise errors.bad_request(f"no available action for string `{errors.shown(name)}`")
        self._require(context, ACTION_PERMISSIONS[name], name)
        body = parse_object(action.body.to_pybytes())
        metrics.annotate(context, rpc=name, resource=body.get("locator") or body.get("name"))
        if streaming is not None:
            return _guard_stream(
                (flight.Result(json.dumps({"action": name, "response": item}).encode() + b"\n")
                 for item in streaming(body)), name)
        return [_result(name, handler(body))]

    def list_actions(self, context):
        return [(name, f"mosaicod action {name}") for name in [*self._actions, *self._streaming_actions]]

    # -- uploads ------------------------------------------------------------------------------
    @endpoint("do_put")
    def do_put(self, context, descriptor: flight.FlightDescriptor, reader: flight.MetadataRecordBatchReader,
               writer: flight.FlightMetadataWriter):
        self._require(context, RPC_PERMISSIONS["do_put"])
        locator, topic_uuid = descriptors.upload(descriptor)
        upload = self.service.begin_upload(locator, topic_uuid, reader.schema)
        metrics.annotate(context, resource=upload.topic["locator_name"])
        started = time.monotonic()
        with self._uploads_lock:
            self._uploads.add(upload)
        try:
            for batch in _put_batches(reader, context):
                upload.write(batch)
                if self._stopping.is_set():  # what was received is kept; the stop does not wait for the rest
                    raise errors.MosaicoError(errors.Kind.UNAVAILABLE, STOPPING)
            upload.finish()
        except BaseException as exc:
            upload.interrupt(_broken_reason(exc))
            raise
        finally:
            with self._uploads_lock:
                self._uploads.discard(upload)
            metrics.annotate(context, bytes_in=upload.bytes_in)
        log.info("upload finished", topic=upload.topic["locator_name"], rows=upload.rows,
                 bytes=upload.bytes_in, seconds=round(time.monotonic() - started, 3))

    # -- reads --------------------------------------------------------------------------------
    @endpoint("get_flight_info")
    def get_flight_info(self, context, descriptor: flight.FlightDescriptor):
        self._require(context, RPC_PERMISSIONS["get_flight_info"])
        res, window = descriptors.read(descriptor)
        metrics.annotate(context, resource=res.locator)
        if res.kind == "sequence":
            schema, app, endpoints = self.service.sequence_view(res.locator, window)
        else:
            schema, ep = self.service.topic_view(res.locator, window)
            app, endpoints = {"resource_locator": res.locator}, [ep]
        return flight.FlightInfo(
            schema, descriptor,
            [flight.FlightEndpoint(ticket, [], app_metadata=json.dumps(meta).encode())
             for ticket, meta in endpoints],
            -1, -1, app_metadata=json.dumps(app).encode())

    @endpoint("get_schema")
    def get_schema(self, context, descriptor: flight.FlightDescriptor):
        self._require(context, RPC_PERMISSIONS["get_schema"])
        return flight.SchemaResult(self.service.returned_schema(descriptors.schema(descriptor)))

    @endpoint("do_get")
    def do_get(self, context, ticket: flight.Ticket):
        self._require(context, RPC_PERMISSIONS["do_get"])
        decoded = TopicTicket.decode(ticket.ticket)
        metrics.annotate(context, resource=decoded.locator)
        schema, batches = self.service.read(
            decoded, should_stop=lambda: self._stopping.is_set() or context.is_cancelled())
        return flight.GeneratorStream(schema, _guard_stream(metrics.count_out(context, batches), "do_get"))

    @endpoint("list_flights")
    def list_flights(self, context, criteria: bytes):
        self._require(context, RPC_PERMISSIONS["list_flights"])
        if criteria not in (b"", b"/", None):
            raise errors.bad_request("Unsupported descriptor: ListFlights accepts only an empty criteria")
        empty = pa.schema([])
        return [flight.FlightInfo(empty, flight.FlightDescriptor.for_path(name),
                                  [flight.FlightEndpoint(name.encode(), [])], -1, -1)
                for name in self.service.sequence_names()]

    def shutdown(self, grace: float | None = None) -> bool:
        """Stop serving: reads and uploads in progress stop at their next step (an upload ends
        *interrupted*), then wait for the calls.  A stream that sends nothing keeps its call
        waiting for the client; with ``grace`` (seconds), the uploads still running after it are
        interrupted from here (every row received is kept) and False is returned: some calls are
        still open, and only the end of the process cuts them."""
        self._stopping.set()
        if grace is None:
            super().shutdown()
            return True
        waiting = threading.Thread(target=super().shutdown, name="flight-shutdown", daemon=True)
        waiting.start()
        waiting.join(grace)
        if not waiting.is_alive():
            return True
        with self._uploads_lock:
            idle = list(self._uploads)
        for upload in idle:
            upload.interrupt("the server was stopped")
        log.warning("stopped with calls still open", uploads_interrupted=len(idle), grace_seconds=grace)
        return False

    def do_exchange(self, context, descriptor, reader, writer):
        raise errors.Unimplemented("Unimplemented: DoExchange is not supported by mosaicod")
