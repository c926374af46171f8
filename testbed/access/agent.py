"""Host side of the guest agent: AgentClient, one SSH channel per node running `tbagent serve`.

Thread-safe and multiplexed: callers on many threads send requests at once; one reader thread
matches the replies (which come in any order) to the requests by id. Replies are untrusted: each
is decoded with tbproto into its op's reply type. A lost session, a reader error or a reply that
matches no request fails every pending call with Unreachable: nothing hangs, nothing is lost."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from tbproto import catalog as proto_catalog
from tbproto import ops as proto
from tbproto.codec import ProtocolError, decode_as, encode
from tbproto.envelope import VERSION, Reply, Request, parse_reply
from tbproto.jsontypes import Json, JsonObject
from tbproto.records import InstanceRecord, RunSummary, SandboxRun, run_records

from testbed.errors import NodeError, NodeTimeout, Unreachable

PROTOCOL = VERSION
MAX_REPLY = 64 << 20  # bytes; a snap.dedup reply carries a hash per page
COMMAND = "tbagent serve"
T = TypeVar("T")


class AgentError(NodeError):
    """The agent answered with an error: the op was refused or failed (the session goes on)."""

    def __init__(self, node: str, op: str, code: str, message: str) -> None:
        self.node, self.op, self.code, self.message = node, op, code, message
        super().__init__(f"{node}: agent {op}: {code}: {message}")


class AgentSkew(NodeError):
    """The agent speaks another protocol version or has another function catalogue than this host."""


class Channel(Protocol):
    """What the client needs of a paramiko Channel."""

    def makefile(self, mode: str) -> IO[bytes]: ...
    def makefile_stdin(self, mode: str) -> IO[bytes]: ...
    def settimeout(self, timeout: float | None) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class ChannelOpener(Protocol):
    @property
    def name(self) -> str: ...


    # paramiko.Channel, which its stubs do not let match Channel (makefile returns ChannelFile):
    # the client narrows it to Channel on receipt.
    def open_channel(self, command: str, timeout: float) -> Any: ...


@dataclass(frozen=True)
class Exchange:
    """One answered request: the JSON result and the agent's own time for the op (ms)."""

    result: Json  # decoded further by the op's reply type
    op_ms: float | None


class Exchanger(Protocol):
    """What callers need of an agent session: AgentClient, or a test's fake."""

    def exchange(self, op: str, args: Mapping[str, Json] | None = None, timeout: float | None = None) -> Exchange: ...


class AgentClient:
    """A context manager: the agent process lives as long as the client. On entering, the agent's
    protocol version and function catalogue are checked against this host's (AgentSkew)."""

    def __init__(self, node: ChannelOpener, timeout: float = 300.0, *, check: bool = True) -> None:
        self.node = node
        self.name = node.name
        self.timeout = timeout
        self.check = check
        self.tap: Callable[[str, bytes], None] | None = None  # sees every line sent ("sent") and received ("received")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards _pending and _failure
        self._write_lock = threading.Lock()  # one request line at a time on the channel
        self._pending: dict[int, tuple[str, Future[Reply]]] = {}
        self._failure: Unreachable | None = None
        self._chan: Channel | None = None
        self._writer: IO[bytes] | None = None
        self._reader_thread: threading.Thread | None = None

    # --- the session --------------------------------------------------------------------------

    def __enter__(self) -> AgentClient:
        try:
            chan: Channel = self.node.open_channel(COMMAND, self.timeout)
            chan.settimeout(None)  # the reader waits for replies as long as the session lives; calls time out
        except NodeError:
            raise
        except Exception as exc:
            raise Unreachable(f"{self.name}: cannot start the agent: {exc or type(exc).__name__}") from exc
        self._chan = chan
        self.attach(chan.makefile("rb"), chan.makefile_stdin("wb"))
        try:
            if self.check:
                self.handshake()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def attach(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        """Start the session over two byte streams (the channel's, or a test's)."""
        self._writer = writer
        self._reader_thread = threading.Thread(target=self._read, args=(reader,), name=f"agent-{self.name}", daemon=True)
        self._reader_thread.start()

    def __exit__(self, *exc: object) -> None:
        self._fail(Unreachable(f"{self.name}: the agent session was closed"))
        if self._chan is not None:
            try:
                self._chan.shutdown_write()
            except Exception:  # noqa: S110 - closing anyway
                pass
            self._chan.close()
        if self._reader_thread is not None and self._reader_thread is not threading.current_thread():
            self._reader_thread.join(timeout=5)

    def handshake(self) -> None:
        pong = self.ping()
        if pong.protocol != PROTOCOL:
            raise AgentSkew(f"{self.name}: the agent ({pong.agent}) speaks protocol {pong.protocol}, this host {PROTOCOL}")
        try:
            functions = self.catalog().functions
        except AgentError as exc:
            raise AgentSkew(f"{self.name}: the agent ({pong.agent}) has no function catalogue ({exc.code}): "
                            "its image predates this host; rebuild it") from exc
        if tuple(functions) != proto_catalog.names():
            raise AgentSkew(f"{self.name}: the agent's functions {', '.join(functions)} are not this host's "
                            f"{', '.join(proto_catalog.names())}: rebuild the image")

    def _fail(self, failure: Unreachable) -> None:
        """End the session: every pending call and every later one fails with `failure`."""
        with self._lock:
            if self._failure is None:
                self._failure = failure
            pending, self._pending = self._pending, {}
        for _op, fut in pending.values():
            if not fut.done():
                fut.set_exception(failure)

    def _read(self, reader: IO[bytes]) -> None:
        try:
            while line := reader.readline(MAX_REPLY + 1):
                if self.tap is not None:
                    self.tap("received", line)
                if len(line) > MAX_REPLY:
                    raise ProtocolError("reply", "reply", f"longer than {MAX_REPLY} bytes")
                reply = parse_reply(json.loads(line))
                with self._lock:
                    entry = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
                if entry is None:
                    raise ProtocolError("reply", "id", f"agent reply out of step: id {reply.id!r:.40} matches no request "
                                        f"({reply.code or 'ok'}: {reply.message:.200})")
                entry[1].set_result(reply)
            self._fail(Unreachable(f"{self.name}: the agent closed the session"))
        except Exception as exc:  # the session cannot be trusted any more: fail everything, keep the cause
            failure = Unreachable(f"{self.name}: agent session lost: {exc or type(exc).__name__}")
            failure.__cause__ = exc
            self._fail(failure)

    # --- requests -----------------------------------------------------------------------------

    def exchange(self, op: str, args: Mapping[str, Json] | None = None, timeout: float | None = None) -> Exchange:
        """One request; its result (JSON) and the agent's time for it. AgentError for an error
        reply, Unreachable when the session is lost, NodeTimeout when no reply comes in time."""
        fut: Future[Reply] = Future()
        with self._lock:
            if self._failure is not None:
                raise Unreachable(str(self._failure)) from self._failure
            if self._writer is None:
                raise Unreachable(f"{self.name}: the agent session is not open")
            rid = next(self._ids)
            self._pending[rid] = (op, fut)
        line = Request(rid, op, dict(args or {})).line().encode()
        # Writing holds its own lock, not the one the reader needs: a write that waits for the
        # channel's window must not stop the replies that open it from being read.
        try:
            with self._write_lock:
                self._writer.write(line)
                self._writer.flush()
        except Exception as exc:
            failure = Unreachable(f"{self.name}: agent {op}: cannot send: {exc or type(exc).__name__}")
            failure.__cause__ = exc
            self._fail(failure)
            raise failure from exc
        if self.tap is not None:
            self.tap("sent", line)
        wait = self.timeout if timeout is None else timeout
        try:
            reply = fut.result(timeout=wait)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(rid, None)
            raise NodeTimeout(f"{self.name}: agent {op}: no reply within {wait:g}s") from None
        if not reply.ok:
            raise AgentError(self.name, op, str(reply.code), reply.message)
        return Exchange(reply.result, reply.timing.op_ms if reply.timing is not None else None)

    def request(self, op: str, args: Mapping[str, Json] | None = None, /, **kwargs: Json) -> Json:
        """The generic request of the scenario `agent` kind: the JSON result."""
        return self.exchange(op, {**(args or {}), **kwargs}).result

    def call(self, req: object, reply_type: object = None, timeout: float | None = None) -> tuple[Json, float | None]:
        """A typed request (a tbproto request object): (its reply decoded as the op's reply type,
        the agent's time in ms). ProtocolError when the reply does not have the op's shape."""
        op = next(o for o in proto.OPS.values() if o.request is type(req))
        ex = self.exchange(op.name, encode(req), timeout)
        return decode_as(reply_type if reply_type is not None else op.reply, ex.result, op.name), ex.op_ms

    # --- typed ops ----------------------------------------------------------------------------

    def ping(self) -> proto.Pong:
        reply: proto.Pong = self.call(proto.Ping())[0]
        return reply

    def info(self) -> proto.NodeInfo:
        reply: proto.NodeInfo = self.call(proto.Info())[0]
        return reply

    def catalog(self) -> proto.CatalogReply:
        reply: proto.CatalogReply = self.call(proto.Catalog())[0]
        return reply

    def store_format(self, mhd: str, slots: int | None = None) -> proto.StoreFormatted:
        reply: proto.StoreFormatted = self.call(proto.StoreFormat(mhd, slots))[0]
        return reply

    def store_put(self, mhd: str, name: str, files: tuple[str, ...], meta: JsonObject | None = None) -> proto.StorePutReply:
        reply: proto.StorePutReply = self.call(proto.StorePut(mhd, name, files, meta))[0]
        return reply

    def store_list(self, mhd: str) -> list[proto.StoreEntry]:
        reply: list[proto.StoreEntry] = self.call(proto.StoreList(mhd))[0]
        return reply

    def store_get(self, mhd: str, name: str, out: str | None = None) -> proto.StoreGetReply:
        reply: proto.StoreGetReply = self.call(proto.StoreGet(mhd, name, out))[0]
        return reply

    def store_delete(self, mhd: str, name: str) -> proto.StoreDeleted:
        reply: proto.StoreDeleted = self.call(proto.StoreDelete(mhd, name))[0]
        return reply

    def store_check(self, mhd: str) -> proto.StoreCheckReply:
        reply: proto.StoreCheckReply = self.call(proto.StoreCheck(mhd))[0]
        return reply

    def store_gc(self, mhd: str) -> proto.StoreGcReply:
        reply: proto.StoreGcReply = self.call(proto.StoreGc(mhd))[0]
        return reply

    def snap_take(self, req: proto.SnapTake) -> proto.SnapTaken:
        reply: proto.SnapTaken = self.call(req)[0]
        return reply

    def snap_prepare(self, req: proto.SnapPrepare) -> proto.SnapPrepared:
        reply: proto.SnapPrepared = self.call(req)[0]
        return reply

    def snap_run(self, req: proto.SnapRun) -> tuple[list[InstanceRecord], RunSummary | None]:
        return run_records(self.exchange("snap.run", encode(req)).result)

    def snap_dedup(self, req: proto.SnapDedup) -> proto.SnapDedupReply:
        reply: proto.SnapDedupReply = self.call(req)[0]
        return reply

    def sandbox_pool(self, req: proto.SandboxPool) -> JsonObject:
        reply: JsonObject = self.call(req)[0]
        return reply

    def sandbox_stop(self, req: proto.SandboxStop) -> proto.SandboxStopped:
        reply: proto.SandboxStopped = self.call(req)[0]
        return reply

    def sandbox_run(self, req: proto.SandboxRunPool | proto.SandboxRunFresh) -> tuple[SandboxRun, float | None]:
        """A function run in a pool sandbox or a fresh one: the record and the agent's time (ms)."""
        reply: SandboxRun
        reply, ms = self.call(req)
        return reply, ms


# The name before the multiplexed client; kept while other modules (executor, cli) still use it.
