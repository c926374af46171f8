"""Live migration of an in-flight llm generation from node A to node B (issue 12, part 4):

- tokens (ServerlessLLM's way): A hands over the token ids; B recomputes the KV cache by a prefill;
- kv-net: A serves its KV cache over TCP to one authenticated connection; B receives it, checks it,
  restores it;
- kv-cxl: A publishes its KV cache in the MHD's template store; B maps the record's extents
  read-only, continues on the shared pages without copying them, unmaps and deletes the record.

A generates `generated` tokens, pauses and returns a handle (JSON) that the host carries to B.
All B is given (handle, stream, shared pages) is untrusted: sizes are bounded before allocating,
the model config must be B's own, lengths fit max_ctx, CRCs match.

kv-net senders: migrate_out starts a thread that serves ONE authenticated connection (a wrong
secret is refused and the thread keeps waiting) until `timeout_s`, then exits; its outcome (state
pending|sent|failed|timeout, bytes, error) is kept in a registry under the handle's id and
`status(id)` answers it in the process that ran A (serve). From the CLI, `llm-migrate out` prints
the handle, stays up until the sender is done and prints its outcome as a second JSON line
(exit status 0 only if sent).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hmac
import itertools
import json
import mmap
import os
import secrets
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from tbagent import boundedjson
from tbagent.dax import ALIGN
from tbagent.errors import command
from tbagent.functions.llm import BOS, MAX_TOKENS, PRESETS, Config, KVCache, Model, tensors
from tbagent.store import Store
from tbagent.store.cli import open_store

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

    from tbagent.commands import Subcommands

HANDLE_FORMAT = "tb-llm-migrate/1"
MAGIC = b"TBKV"
WIRE = struct.Struct("<4sIQQ")  # magic, header bytes, k bytes, v bytes; then header, k, v; B acks ACK
ACK = b"\x01"
SECRET_BYTES = 16
MAX_HEADER = 1 << 16
MAX_HANDLE = 8 << 20  # max_ctx (at most 2**17) token ids as JSON fit
AUTH_TIMEOUT_S = 5.0  # a connection that does not send the secret soon is dropped
DEFAULT_TIMEOUT_S = 60.0
RECORD_PREFIX = "llm-kv-"
now = time.perf_counter


class Method(StrEnum):
    TOKENS = "tokens"
    KV_NET = "kv-net"
    KV_CXL = "kv-cxl"


class MigrateError(ValueError):
    """A hand-over refused: bad handle, stream or record; the message says which and why."""


@functools.lru_cache(maxsize=2)
def model_for(preset: str, dtype: str, seed: int) -> Model:
    """The deterministic model of a preset (A and B each build their own: weights are not moved)."""
    if preset not in PRESETS:
        raise ValueError(f"llm preset {preset!r}: known presets are {', '.join(PRESETS)}")
    cfg = Config.from_json({**PRESETS[preset].to_json(), "dtype": dtype, "seed": seed})
    return Model(cfg, tensors(cfg))


def prompt_ids(prompt: str, context: int) -> list[int]:
    """BOS then the prompt's bytes, repeated or cut so that there are `context` tokens in all."""
    raw = prompt.encode()
    if context < 1 or (context > 1 and not raw):
        raise ValueError(f"llm-migrate: cannot make a context of {context} tokens from prompt {prompt!r:.40}")
    body = (raw * -(-(context - 1) // max(1, len(raw))))[: context - 1]
    return [BOS, *body]


def max_kv_part(cfg: Config) -> int:
    """The largest k (or v) part a cache of cfg can have: the bound checked before allocating."""
    return cfg.layers * cfg.heads * cfg.max_ctx * cfg.head_dim * 4


# --- A: generate, pause, hand over ------------------------------------------------------------

def migrate_out(method: Method | str, *, preset: str, dtype: str, seed: int, prompt: str, context: int,
                generated: int, mhd: str | None, bind: str | None, head: int | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> JsonObject:
    """Node A. `bind` (kv-net): HOST[:PORT] to listen on, an address B can reach; `mhd` (kv-cxl): the
    MHD name or device path, `head` this node's head in it (default: from the boot-time set-up)."""
    method = Method(method)
    model = model_for(preset, dtype, seed)
    if not isinstance(generated, int) or not 1 <= generated <= MAX_TOKENS:
        raise ValueError(f"llm-migrate: generated must be 1..{MAX_TOKENS}, not {generated!r}")
    ids = prompt_ids(prompt, context)
    cache = model.new_cache()
    marks: list[float] = []
    t0 = now()
    out = model.generate(ids, generated, cache, on_token=lambda i, t: marks.append(now()))
    paused = now()
    hid = secrets.token_hex(16)
    history = [*ids, *out]
    handle: JsonObject = {"format": HANDLE_FORMAT, "id": hid, "method": str(method), "config": model.cfg.to_json(),
                          "prompt_tokens": len(ids), "tokens": history, "generated": out, "kv_length": cache.length}
    sizes: JsonObject = {"tokens_json": len(_dumps(history))}
    if method is not Method.TOKENS:
        header, k, v = cache.export()
        sizes |= {"kv": cache.nbytes_used(), "header": len(header)}
        if method is Method.KV_NET:
            handle["kv-net"] = start_sender(hid, bind, header, k, v, timeout_s)
        else:
            if mhd is None:
                raise ValueError("llm-migrate: kv-cxl needs the MHD (--mhd)")
            with open_store(mhd, head) as st:
                st.publish(RECORD_PREFIX + hid, [k, v], {"kind": "llm-kv", "header": header.decode()})
            handle["kv-cxl"] = {"record": RECORD_PREFIX + hid}
            sizes["cxl_written"] = cache.nbytes_used()
    handle["timings"] = {"prefill_s": marks[0] - t0, "generate_s": paused - t0, "export_s": now() - paused}
    handle["bytes"] = sizes
    return handle


class Sender:
    """One kv-net hand-over: a thread serving the cache to one authenticated connection."""

    def __init__(self, hid: str, listener: socket.socket, secret: bytes, parts: list[bytes | memoryview],
                 timeout_s: float) -> None:
        self.id, self.listener, self.secret, self.parts = hid, listener, secret, parts
        self.deadline, self.timeout_s = time.monotonic() + timeout_s, timeout_s
        self.outcome: JsonObject = {"id": hid, "state": "pending"}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"kv-net-{hid[:8]}", daemon=True)

    def _run(self) -> None:
        t0, result, rejected = now(), {}, [0]
        try:
            result = {"state": "sent", **self._serve(rejected)}
        except BaseException as exc:  # kept for status(): a sender's failure is never lost
            state = "timeout" if isinstance(exc, TimeoutError) else "failed"
            result = {"state": state, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            self.listener.close()
            self.parts = []  # the cache's memory may go
            with _LOCK:
                self.outcome = {"id": self.id, **result, "rejected": rejected[0], "elapsed_s": now() - t0}
            self.done.set()

    def _expired(self) -> TimeoutError:
        return TimeoutError(f"no receiver sent the secret within {self.timeout_s} s")

    def _left(self) -> float:
        if (left := self.deadline - time.monotonic()) <= 0:
            raise self._expired()
        return left

    def _serve(self, rejected: list[int]) -> JsonObject:
        while True:
            self.listener.settimeout(self._left())
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                raise self._expired() from None
            with conn:
                try:
                    conn.settimeout(min(self._left(), AUTH_TIMEOUT_S))
                    authentic = hmac.compare_digest(recv_exact(conn, SECRET_BYTES, "the secret"), self.secret)
                except (OSError, MigrateError):
                    authentic = False
                if not authentic:
                    rejected[0] += 1
                    continue
                t0 = now()
                conn.settimeout(self._left())
                for part in self.parts:
                    conn.sendall(part)
                if conn.recv(1) != ACK:
                    raise MigrateError(f"the receiver {peer} closed without acknowledging the KV cache")
                return {"bytes": sum(len(p) for p in self.parts), "send_s": now() - t0, "peer": f"{peer[0]}:{peer[1]}"}


_LOCK = threading.Lock()
_SENDERS: dict[str, Sender] = {}
_KEEP = 64  # finished senders remembered


def start_sender(hid: str, bind: str | None, header: bytes, k: Sequence[memoryview], v: Sequence[memoryview],
                 timeout_s: float) -> JsonObject:
    """Listen on `bind`, start the sender thread, register it; the handle's kv-net data."""
    if not bind:
        raise ValueError("llm-migrate: kv-net needs --bind HOST[:PORT], an address of A that B can reach")
    host, _, port = bind.rpartition(":") if ":" in bind else (bind, "", "0")
    if not 0 < timeout_s <= 3600:
        raise ValueError(f"llm-migrate: timeout_s={timeout_s} is out of range (0, 3600]")
    listener = socket.create_server((host, int(port)))
    secret = secrets.token_bytes(SECRET_BYTES)
    klen, vlen = sum(len(c) for c in k), sum(len(c) for c in v)
    sender = Sender(hid, listener, secret, [WIRE.pack(MAGIC, len(header), klen, vlen), header, *k, *v], timeout_s)
    with _LOCK:
        finished = [i for i, s in _SENDERS.items() if s.done.is_set()]
        for i in finished[: max(0, len(finished) - _KEEP)]:
            del _SENDERS[i]
        _SENDERS[hid] = sender
    sender.thread.start()
    return {"host": host, "port": listener.getsockname()[1], "secret": secret.hex()}


def status(handle_id: str, wait_s: float = 0.0) -> JsonObject:
    """A kv-net sender's outcome (state pending|sent|failed|timeout), after waiting up to wait_s for it."""
    with _LOCK:
        sender = _SENDERS.get(handle_id)
    if sender is None:
        raise ValueError(f"llm-migrate: no kv-net sender {handle_id!r:.40} in this process")
    sender.done.wait(max(0.0, wait_s))
    with _LOCK:
        return dict(sender.outcome)


# --- B: import, continue ------------------------------------------------------------------------

@dataclass(frozen=True)
class Handover:
    """A checked handle: the tokens so far (the last is where B continues from) and the method's data."""

    id: str
    method: Method
    history: list[int]
    data: JsonObject


def _int(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _hex(value: object, nbytes: int) -> bool:
    return isinstance(value, str) and len(value) == 2 * nbytes and all(c in "0123456789abcdef" for c in value)


def check_handle(handle: Json, method: Method, cfg: Config) -> Handover:
    """The handle from the host, untrusted: its format, method, model config (must be B's own),
    tokens (ids of cfg's vocabulary, 2..max_ctx of them) and the method's data."""
    if not isinstance(handle, dict) or handle.get("format") != HANDLE_FORMAT:
        raise MigrateError(f"the handle is not a {HANDLE_FORMAT} object")
    hid, history = handle.get("id"), handle.get("tokens")
    if not _hex(hid, 16) or handle.get("method") != method:
        raise MigrateError(f"the handle's id or method is wrong (expected a {method} handle)")
    try:
        same = Config.from_json(handle.get("config")) == cfg
    except ValueError as exc:
        raise MigrateError(f"the handle's model config is invalid: {exc}") from None
    if not same:
        raise MigrateError("the handle was made by another model config than B's")
    if not isinstance(history, list) or not 2 <= len(history) <= cfg.max_ctx \
            or not all(_int(t, 0, cfg.vocab - 1) for t in history):
        raise MigrateError(f"the handle's tokens are not 2..{cfg.max_ctx} ids in 0..{cfg.vocab - 1}")
    data: JsonObject = {}
    if method is not Method.TOKENS:
        if handle.get("kv_length") != len(history) - 1:
            raise MigrateError("the handle's kv_length is not its token count - 1")
        raw = handle.get(str(method))
        data = raw if isinstance(raw, dict) else {}
    if method is Method.KV_NET and not (isinstance(data.get("host"), str) and 0 < len(str(data["host"])) <= 255
                                        and _int(data.get("port"), 1, 65535) and _hex(data.get("secret"), SECRET_BYTES)):
        raise MigrateError("the handle's kv-net data is not {host, port, secret}")
    if method is Method.KV_CXL and data.get("record") != RECORD_PREFIX + str(hid):
        raise MigrateError("the handle's kv-cxl record is not this hand-over's")
    return Handover(str(hid), method, [int(t) for t in history], data)


def recv_exact(sock: socket.socket, n: int, what: str, deadline: float | None = None) -> bytearray:
    """n bytes from sock, or MigrateError if the stream ends first, TimeoutError after `deadline`."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"kv-net: {what}: only {got} of {n} bytes before the timeout")
            sock.settimeout(left)
        try:
            r = sock.recv_into(view[got:])
        except TimeoutError:
            raise TimeoutError(f"kv-net: {what}: only {got} of {n} bytes before the timeout") from None
        if r == 0:
            raise MigrateError(f"kv-net: the stream ended in {what} after {got} of {n} bytes")
        got += r
    return buf


def receive_kv(data: JsonObject, cfg: Config, timeout_s: float) -> tuple[KVCache, JsonObject]:
    """Connect to A's sender, authenticate, receive and check the cache, acknowledge."""
    host, port, deadline = str(data["host"]), int(str(data["port"])), time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError:
        raise TimeoutError(f"kv-net: no connection to {host}:{port} within {timeout_s} s") from None
    except OSError as exc:
        raise OSError(f"kv-net: cannot connect to the sender at {host}:{port}: {exc}") from None
    with sock:
        sock.sendall(bytes.fromhex(str(data["secret"])))
        try:
            magic, hlen, klen, vlen = WIRE.unpack(recv_exact(sock, WIRE.size, "the preamble", deadline))
        except MigrateError:
            raise MigrateError(f"kv-net: {host}:{port} closed the connection (wrong secret, or it serves no more)") from None
        if magic != MAGIC or not 0 < hlen <= MAX_HEADER or not klen == vlen <= max_kv_part(cfg):
            raise MigrateError(f"kv-net: bad preamble (magic {magic!r}, header {hlen}, k {klen}, v {vlen} bytes; "
                               f"at most {MAX_HEADER} and {max_kv_part(cfg)})")
        header = recv_exact(sock, hlen, "the header", deadline)
        k, v = recv_exact(sock, klen, "the keys", deadline), recv_exact(sock, vlen, "the values", deadline)
        try:
            cache = KVCache.from_export(cfg, bytes(header), k, v)
        except ValueError as exc:
            raise MigrateError(f"kv-net: {exc}") from None
        sock.sendall(ACK)
    return cache, {"net": SECRET_BYTES + WIRE.size + hlen + klen + vlen + len(ACK), "kv": klen + vlen, "header": hlen}


@contextlib.contextmanager
def mapped_kv(store: Store, name: str, cfg: Config) -> Iterator[tuple[KVCache, list[mmap.mmap]]]:
    """The KV cache of record `name`, wrapping read-only MAP_SHARED windows (2 MiB aligned, as
    device-dax maps) of its two extents without a copy; unmapped on exit (the caller must have
    dropped the cache by then)."""
    rec = store.find(name)
    header, ext = rec.payload["meta"].get("header"), rec.extents
    if not isinstance(header, str) or len(header) > MAX_HEADER or len(ext) != 2 \
            or not ext[0]["len"] == ext[1]["len"] <= max_kv_part(cfg):
        raise MigrateError(f"kv-cxl: record {name!r} is not an llm KV cache of this model (header, 2 extents, sizes)")
    maps: list[mmap.mmap] = []
    views: list[memoryview] = []
    done = False
    try:
        fd = os.open(store.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for e in ext:
                start, end = e["off"] - e["off"] % ALIGN, -(-(e["off"] + e["len"]) // ALIGN) * ALIGN
                if end > store.size:
                    raise MigrateError(f"kv-cxl: extent {e} lies past the device's end")
                # Another head wrote these lines: drop stale cached copies first. clflush acts on the
                # physical line, so invalidating through the store's own mapping covers this alias.
                store.cache.invalidate(e["off"], e["len"])
                maps.append(mmap.mmap(fd, end - start, mmap.MAP_SHARED, mmap.PROT_READ, offset=start))
                views.append(memoryview(maps[-1])[e["off"] - start: e["off"] - start + e["len"]])
        finally:
            os.close(fd)
        error = ""
        try:
            cache = KVCache.from_export(cfg, header.encode(), views[0], views[1])
        except ValueError as exc:
            error = str(exc)  # raised below, so no traceback keeps the mapping exported
        if error:
            raise MigrateError(f"kv-cxl: {error}")
        yield cache, maps
        del cache
        done = True
    finally:
        _unmap(views, maps, strict=done)


def _unmap(views: list[memoryview], maps: list[mmap.mmap], strict: bool) -> None:
    """Unmap. A BufferError (someone still holds the cache) is a bug, raised unless an error is
    already on its way: then the pages go when the traceback that holds them does."""
    try:
        for view in views:
            view.release()
        for m in maps:
            m.close()
    except BufferError:
        if strict:
            raise


def migrate_in(method: Method | str, handle: Json, *, preset: str, dtype: str, seed: int, tokens: int,
               mhd: str | None, head: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> JsonObject:
    """Node B: import the generation A handed over, continue `tokens` tokens. import_s is the import
    (prefill / connect+receive+check / map+check), first_token_s from its end to the first new token;
    downtime adds A's export_s (the handle's trip through the host is the host's to time). kv-cxl:
    a record B refuses stays in the store for inspection (`tbagent store delete` removes it)."""
    method = Method(method)
    model = model_for(preset, dtype, seed)
    cfg = model.cfg
    h = check_handle(handle, method, cfg)
    if not isinstance(tokens, int) or not 1 <= tokens <= cfg.max_ctx - (len(h.history) - 1):
        raise ValueError(f"llm-migrate: tokens={tokens!r}: 1..{cfg.max_ctx - len(h.history) + 1} fit max_ctx")
    marks: list[float] = []
    t0 = now()
    sizes: JsonObject = {"handle": len(_dumps(handle))}
    if method is Method.TOKENS:
        cache = model.new_cache()
        model.prefill(h.history[:-1], cache)
        sizes["net"] = len(_dumps(h.history))
        out, t1 = _continue(model, cache, h.history, tokens, marks)
    elif method is Method.KV_NET:
        cache, got = receive_kv(h.data, cfg, timeout_s)
        sizes |= got
        out, t1 = _continue(model, cache, h.history, tokens, marks)
    else:
        if mhd is None:
            raise ValueError("llm-migrate: kv-cxl needs the MHD (--mhd)")
        with open_store(mhd, head) as st:
            with mapped_kv(st, str(h.data["record"]), cfg) as (cache, _):
                out, t1 = _continue(model, cache, h.history, tokens, marks)
                kv = cache.past_k.nbytes + cache.past_v.nbytes
                del cache
            st.delete(str(h.data["record"]))
        # the CRC pass, then each new token's attention reads the whole past again
        sizes |= {"net": sizes["handle"], "kv": kv, "cxl_read": kv * (1 + tokens)}
    gap = statistics.median(b - a for a, b in itertools.pairwise(marks)) if len(marks) > 1 else None
    timings = handle.get("timings") if isinstance(handle, dict) else None
    export_s = timings.get("export_s") if isinstance(timings, dict) else None
    export = float(export_s) if isinstance(export_s, int | float) and 0 <= export_s < 1e6 else 0.0
    down = {"export_s": export, "import_s": t1 - t0, "first_token_s": marks[0] - t1}
    total = sum(down.values())  # the pause as B's user sees it, less the handle's trip through the host
    return {"id": h.id, "method": str(method), "tokens": out, "import_s": t1 - t0, "first_token_s": marks[0] - t1,
            "downtime": {**down, "total_s": total}, "token_gap_s": gap,
            "downtime_tokens": total / gap if gap else None, "bytes": sizes}


def _continue(model: Model, cache: KVCache, history: list[int], n: int, marks: list[float]) -> tuple[list[int], float]:
    """generate() from the last token on the imported cache, which must hold all the others."""
    if cache.length != len(history) - 1:
        raise MigrateError(f"the imported KV cache holds {cache.length} positions, the handle {len(history) - 1}")
    t1 = now()
    return model.generate([history[-1]], n, cache, on_token=lambda i, t: marks.append(now())), t1


def _dumps(obj: Json) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --- CLI ------------------------------------------------------------------------------------------

def _print(obj: Json) -> None:
    sys.stdout.write(_dumps(obj).decode() + "\n")
    sys.stdout.flush()  # the host reads A's handle while A still serves


def _read_handle(arg: str) -> Json:
    if arg == "-":
        text = sys.stdin.read(MAX_HANDLE + 1)
    elif arg.startswith("@"):
        with open(arg[1:], encoding="utf-8") as fh:
            text = fh.read(MAX_HANDLE + 1)
    else:
        text = arg
    return boundedjson.loads(text, MAX_HANDLE, 8)


@command("llm-migrate")
def _run(args: argparse.Namespace) -> int:
    model_args = {"preset": args.preset, "dtype": args.dtype, "seed": args.seed}
    if args.op == "in":
        _print(migrate_in(args.method, _read_handle(args.handle), **model_args, tokens=args.tokens, mhd=args.mhd,
                          head=args.head, timeout_s=args.timeout))
        return 0
    handle = migrate_out(args.method, **model_args, prompt=args.prompt, context=args.context, generated=args.generated,
                         mhd=args.mhd, bind=args.bind, head=args.head, timeout_s=args.timeout)
    _print(handle)
    if args.method == Method.KV_NET:  # stay up while the sender serves, then say how it went
        _print({"sender": (outcome := status(str(handle["id"]), wait_s=args.timeout + 1))})
        return 0 if outcome.get("state") == "sent" else 1
    return 0


def register(sub: Subcommands) -> None:
    p = sub.add_parser("llm-migrate", help="migrate an in-flight llm generation between nodes (tokens, kv-net, kv-cxl)")
    ops = p.add_subparsers(dest="op", required=True)
    out = ops.add_parser("out", help="node A: generate, pause, print the hand-over handle (kv-net: then serve it)")
    inn = ops.add_parser("in", help="node B: import a handle's generation and continue it")
    for q in (out, inn):
        q.add_argument("--method", required=True, choices=[str(m) for m in Method])
        q.add_argument("--preset", default="ci", choices=list(PRESETS))
        q.add_argument("--dtype", default="float32", choices=["float16", "float32"])
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--mhd", help="kv-cxl: the MHD name or device path")
        q.add_argument("--head", type=int, help="kv-cxl: this node's head (default: from the boot-time CXL set-up)")
        q.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="kv-net: seconds to serve / to receive")
    out.add_argument("--prompt", required=True)
    out.add_argument("--context", type=int, required=True, help="prompt tokens (the prompt's bytes repeated)")
    out.add_argument("--generated", type=int, required=True, help="tokens A generates before it pauses")
    out.add_argument("--bind", help="kv-net: HOST[:PORT] to listen on, an address B can reach")
    inn.add_argument("--handle", required=True, help="the handle: JSON text, @FILE or - (stdin)")
    inn.add_argument("--tokens", type=int, required=True, help="tokens to continue")
    p.set_defaults(fn=_run)
