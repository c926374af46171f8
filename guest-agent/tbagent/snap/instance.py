"""Function instances, started in one of four ways, each in its own PID namespace (so any number
of instances restored from one snapshot coexist: each is PID 1 of its own namespace).

  cold      unshare + setsid + fnserver: process start and the function's initialisation
  criu      `criu restore` of the full image set: every page copied from local images
  lazy      `criu restore --lazy-pages` + `criu lazy-pages`: pages served by userfaultfd
  template  `criu restore` of the stripped image set + the cxltb_mmt plugin: private memory
            attached from the mm-template (copy-on-write on the CXL pages), nothing copied

The host side talks to an instance through two pipes (requests in, replies out); a restore gets
new pipes in place of the dumped ones through --inherit-fd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tbproto.ops import Mode  # the restore modes are part of the protocol (snap.run's mode)

from tbagent.functions import spec
from tbagent.lines import Closed, LinePipes, log_tail

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

RUN_DIR = Path(os.environ.get("CXLTB_SNAP_RUN", "/run/tbagent/instances"))
PLUGIN_DIR = "/usr/lib/cxltb/criu"
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
READY_TIMEOUT = 300.0


class InstanceError(RuntimeError):
    pass


def function_env(function: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**BASE_ENV, **spec(function).env, **(extra or {})}


@dataclass
class Instance:
    mode: Mode
    pid: int                       # the function's process (PID 1 of its namespace)
    chan: LinePipes                # requests in, replies out
    workdir: Path
    reap: subprocess.Popen[bytes] | None = None   # cold: the unshare parent; else None (a child of ours)
    lazy: subprocess.Popen[bytes] | None = None
    marks: dict[str, float] = field(default_factory=dict)

    def readline(self, timeout: float) -> JsonObject:
        try:
            return self.chan.recv(timeout)
        except TimeoutError:
            raise InstanceError(f"{self.mode} instance {self.pid}: no reply within {timeout:.0f} s") from None
        except Closed:
            raise InstanceError(f"{self.mode} instance {self.pid} exited{self._log_tail()}") from None

    def request(self, req: JsonObject, timeout: float = READY_TIMEOUT) -> JsonObject:
        try:
            self.chan.send(req)
        except Closed:
            raise InstanceError(f"{self.mode} instance {self.pid} exited{self._log_tail()}") from None
        return self.readline(timeout)

    def invoke(self, event: JsonObject, timeout: float = READY_TIMEOUT) -> tuple[JsonObject, float]:
        t0 = time.monotonic()
        reply = self.request({"op": "invoke", "event": event}, timeout)
        return reply, time.monotonic() - t0

    def _log_tail(self) -> str:
        log = self.workdir / "restore.log"
        return f": {log_tail(str(log))}" if log.exists() else ""

    def stop(self) -> None:
        self.chan.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace ignores SIGTERM
        if self.reap is not None:
            self.reap.wait()
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if self.lazy is not None:
            if self.lazy.poll() is None:
                self.lazy.kill()
            self.lazy.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _workdir() -> Path:
    d = RUN_DIR / uuid.uuid4().hex[:12]
    d.mkdir(parents=True)
    return d


def start_cold(function: str, env: dict[str, str] | None = None) -> Instance:
    t0 = time.monotonic()
    argv = ["unshare", "--pid", "--fork", "--kill-child", "setsid",
            sys.executable, "-m", "tbagent.snap.fnserver", function]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=function_env(function, env),
                            start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    inst = Instance(Mode.COLD, 0, LinePipes(os.dup(proc.stdin.fileno()), os.dup(proc.stdout.fileno())), _workdir(),
                    reap=proc)
    proc.stdin.close()
    proc.stdout.close()
    try:
        ready = inst.readline(READY_TIMEOUT)
        if not ready.get("ready"):
            raise InstanceError(f"{function}: initialisation failed: {ready.get('error')}")
        inst.pid = _child_of(proc.pid)
    except BaseException:
        inst.stop()
        raise
    inst.marks.update(start=t0, ready=time.monotonic(), init_s=float(ready.get("init_s", 0.0)))
    return inst


def _child_of(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        kids = fh.read().split()
    if len(kids) != 1:
        raise InstanceError(f"unshare {pid} has {len(kids)} children, expected the function's process")
    return int(kids[0])


def start_restore(mode: Mode, imgdir: Path, pipes: dict[str, str], lazy_from: Path | None = None,
                  populate: bool = False) -> Instance:
    """Restore one instance from `imgdir` (full image set for criu/lazy, stripped for template)."""
    t0 = time.monotonic()
    work = _workdir()
    ri, wi = os.pipe()
    ro, wo = os.pipe()
    lazy = None
    argv = ["criu", "restore", "-D", str(imgdir), "-W", str(work), "--restore-detached", "--restore-sibling",
            "--pidfile", str(work / "pid"), "-o", "restore.log", "-v2",
            "--inherit-fd", f"fd[{ri}]:{pipes['in']}", "--inherit-fd", f"fd[{wo}]:{pipes['out']}"]
    env = dict(BASE_ENV)
    try:
        if mode is Mode.LAZY:
            lazy = subprocess.Popen(["criu", "lazy-pages", "-D", str(lazy_from or imgdir), "-W", str(work),
                                     "-o", "lazy.log", "-v2"], stdin=subprocess.DEVNULL)
            sock = work / "lazy-pages.socket"
            deadline = time.monotonic() + 30
            while not sock.exists():
                if lazy.poll() is not None or time.monotonic() > deadline:
                    raise InstanceError(f"criu lazy-pages did not start: {log_tail(str(work / 'lazy.log'))}")
                time.sleep(0.002)
            argv.append("--lazy-pages")
        elif mode is Mode.TEMPLATE:
            argv += ["--libdir", PLUGIN_DIR]
            if populate:
                env["CXLTB_MMT_POPULATE"] = "1"
        t1 = time.monotonic()
        res = subprocess.run(argv, pass_fds=(ri, wo), env=env, stdin=subprocess.DEVNULL, capture_output=True)
        t2 = time.monotonic()
        if res.returncode != 0:
            raise InstanceError(f"criu restore ({mode}) failed: {log_tail(str(work / 'restore.log'))}")
        pid = int((work / "pid").read_text())
    except BaseException:
        for fd in (ri, wi, ro, wo):
            os.close(fd)
        if lazy is not None:
            lazy.kill()
            lazy.wait()
        shutil.rmtree(work, ignore_errors=True)
        raise
    os.close(ri)
    os.close(wo)
    inst = Instance(mode, pid, LinePipes(wi, ro), work, lazy=lazy)
    try:
        reply = inst.request({"op": "ping"})  # restored and answering: ready
        if not reply.get("ok"):
            raise InstanceError(f"restored instance answered {reply}")
    except BaseException:
        inst.stop()
        raise
    inst.marks.update(start=t0, restore_s=t2 - t1, ready=time.monotonic())
    return inst
