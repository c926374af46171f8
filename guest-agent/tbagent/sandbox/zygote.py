"""Sandbox inits, and the factory that forks them.

The factory is one single-threaded Python process per pool (`python3 -m tbagent.sandbox.zygote
FD`), with everything a sandbox init needs already imported. To create a sandbox it forks; the
child joins the sandbox's cgroup, unshare(2)s mount, UTS, IPC, network and PID namespaces and
forks again: the grandchild is PID 1 of the new PID namespace, the sandbox init ("zygote"). Being
forked, inits share the factory's pages copy-on-write, so an idle sandbox costs only what it has
written since (its z-ID cgroup's memory.current).

A zygote serves its pool over a SOCK_SEQPACKET channel: `setup` (its private stage, once),
`prepare` (fork the spare: the next function's process), `start` (a start hook instead of the
spare), `reset` (the in-sandbox cleanup steps), `inspect`. After `setup` its root is the stage:
  /store  the layer store (read-only bind)     /cg    the sandbox cgroup tree (bind)
  /dev    a small tmpfs with device nodes      /rw    this sandbox's tmpfs: upper/ and work/
  /proc   its PID namespace's proc             /root  the function's rootfs (overlay)
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import stat
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tbagent.lines import log_tail
from tbagent.sandbox import linux, net, paths, proto, runner

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
FUNCTION_MOUNTS = ("/root", "/root/proc", "/root/dev", "/root/sys/fs/cgroup")  # made for every function
RESET_STEPS = ("mounts", "upper", "hostname", "ipc", "network")                 # in this order
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
PROC_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
CGROUP_ATTRS = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_NOEXEC


def mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh]


# --- how a function's process comes to life in a repurposed sandbox -------------------------
# The default path is the spare: a child of this init, forked during the previous cleanup (or at
# creation), already moved into fn-ID and into a cgroup namespace rooted there, holding the
# runtime but no function. The pool sends it the start message itself (the rootfs overlay, the
# environment): it mounts the function's rootfs, chroots and runs the function. The fork and the
# cgroup migration (an RCU grace period: 10-20 ms under TCG) are off the start path, and so is
# this init. START_HOOKS are the other way in, through this init (op "start"): "fork" makes a
# process on demand. The seam for TrEnv's combined path (issue part 5) is a hook here that
# restores a template-mode snapshot into the prepared rootfs, cgroup and namespaces instead.

StartHook = Callable[["Zygote", "JsonObject"], tuple[list[int], int]]


def mount_rootfs(overlay: str) -> None:
    """The function's root filesystem at /root: overlay, its PID namespace's proc, the devices."""
    root = paths.IN_ROOT
    linux.mount("tbsandbox", root, "overlay", 0, overlay)
    linux.mount("proc", f"{root}/proc", "proc", PROC_FLAGS)
    linux.mount(paths.IN_DEV, f"{root}/dev", None, linux.MS_BIND | linux.MS_REC)


def _warm_up() -> None:
    """In the spare, before it waits: run the start path's Python once so that the pages it writes
    (copy-on-write from the init) are copied now, off the start path."""
    proto.decode(proto.encode({"overlay": "lowerdir=/store/fn/x:/store/base,upperdir=/rw/upper,workdir=/rw/work",
                               "env": dict(BASE_ENV), "go": time.monotonic(), "started": 0.0, "marks": {"go": 0.0}}))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(saved)
    try:  # both fail at once (no such path, bad fd): only the ctypes call paths are exercised
        linux.mount(None, "/.warm-up", None)
    except OSError:
        pass
    try:
        linux.attach_mount(-1, "/.warm-up")
    except OSError:
        pass


def start_fork(z: Zygote, msg: JsonObject) -> tuple[list[int], int]:
    """Hook "fork": a process made now (the slow path: fork and cgroup migration included)."""
    pid, ours = z.fork_spare()
    proto.send(ours, {"overlay": msg["overlay"], "env": msg["env"], "go": time.monotonic()})
    return [ours.detach()], pid


CRIU_WORK = "/tmp/.cxltb-criu"  # in the function's rootfs (its fresh upper directory)


def start_restore(z: Zygote, msg: JsonObject) -> tuple[list[int], int]:
    """Hook "restore", TrEnv's start path: the function's process is restored from a snapshot
    (tbagent.snap) by CRIU run inside this sandbox: in its fn cgroup, its namespaces (the
    restored process is PID 1 of a PID namespace nested in this one) and the function's rootfs.
    `images` is the image set's path in the stage (under /store); for a template-mode image set
    the cxltb_mmt plugin attaches the mm-template. Returns the pipes to the process (requests
    in, replies out) and its PID here; it is this init's child (--restore-sibling)."""
    ri, wi = os.pipe()
    ro, wo = os.pipe()
    pipes = dict(msg["pipes"])
    argv = ["criu", "restore", "-D", f"/proc/1/root{msg['images']}", "-W", CRIU_WORK, "--restore-detached",
            "--restore-sibling", "--manage-cgroups=ignore", "--pidfile", f"{CRIU_WORK}/pid", "-o", "restore.log",
            "-v2", "--inherit-fd", f"fd[{ri}]:{pipes['in']}", "--inherit-fd", f"fd[{wo}]:{pipes['out']}"]
    if msg.get("plugin"):
        argv += ["--libdir", str(msg["plugin"])]
    env = {**BASE_ENV, **({"CXLTB_MMT_POPULATE": "1"} if msg.get("populate") else {})}
    child = os.fork()
    if child == 0:
        try:
            os.close(wi)
            os.close(ro)
            z.ctl.close()
            fd = os.open(f"{paths.IN_CGROUP}/{z.fn_cgroup}/cgroup.procs", os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            mount_rootfs(str(msg["overlay"]))
            os.chroot(paths.IN_ROOT)
            os.chdir("/")
            os.makedirs(CRIU_WORK, exist_ok=True)
            os.set_inheritable(ri, True)
            os.set_inheritable(wo, True)
            os.execvpe("criu", argv, env)  # noqa: S606 - argv list, no shell
        except BaseException:
            traceback.print_exc()
        os._exit(127)
    os.close(ri)
    os.close(wo)
    status = z.wait_child(child)
    try:
        if status != 0:
            raise OSError(f"criu restore exited with {status}: {log_tail(paths.IN_ROOT + CRIU_WORK + '/restore.log')}")
        with open(f"{paths.IN_ROOT}{CRIU_WORK}/pid") as fh:
            pid = int(fh.read())
    except BaseException:
        os.close(wi)
        os.close(ro)
        raise
    return [wi, ro], pid


START_HOOKS: dict[str, StartHook] = {"fork": start_fork, "restore": start_restore}


class Zygote:
    def __init__(self, ctl: socket.socket, cfg: JsonObject) -> None:
        self.ctl = ctl
        self.hostname = str(cfg["hostname"])
        self.fn_cgroup = str(cfg["fn_cgroup"])
        self.rw_size = str(cfg.get("rw_size", "256m"))
        self.pristine_env = dict(BASE_ENV)
        self.baseline: list[str] = []
        self.exits: dict[int, int] = {}
        self.net_prefix = int(cfg.get("net_prefix", 30))
        self.net_baseline: JsonObject = {}

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> NoReturn:
        signal.signal(signal.SIGCHLD, self._reap)
        os.environ.clear()
        os.environ.update(self.pristine_env)
        linux.set_name("tbsandbox-init")
        while True:
            try:
                msg = proto.recv(self.ctl)
            except (proto.Closed, OSError):
                os._exit(0)  # the pool is gone: PID 1 exits, the kernel kills the whole sandbox
            try:
                reply, fds = getattr(self, "op_" + str(msg.get("op")))(msg)
                reply["ok"] = True
            except Exception as exc:
                reply, fds = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, []
            proto.send(self.ctl, reply, fds)
            for fd in fds:
                os.close(fd)

    def _reap(self, _sig: int, _frame: object) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = status
            if len(self.exits) > 64:
                self.exits.pop(next(iter(self.exits)))

    # --- setup: the stage --------------------------------------------------------------------
    def op_setup(self, msg: JsonObject) -> tuple[JsonObject, list[int]]:
        t0 = time.monotonic()
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        st = str(paths.STAGE)
        linux.mount("tbstage", st, "tmpfs", linux.MS_NOSUID, "size=1m,mode=0755")
        for d in ("store", "cg", "dev", "rw", "root", "proc", ".old"):
            os.mkdir(f"{st}/{d}")
        linux.mount(str(paths.STORE), f"{st}/store", None, linux.MS_BIND)
        linux.mount(None, f"{st}/store", None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
        linux.mount(str(paths.CGROUP_ROOT / paths.CGROUP_TREE), f"{st}/cg", None, linux.MS_BIND)
        linux.mount("tbdev", f"{st}/dev", "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "size=64k,mode=0755")
        for name, (major, minor) in DEVICES.items():
            os.mknod(f"{st}/dev/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(f"{st}/dev/{name}", 0o666)  # noqa: S103 - device nodes like /dev/null
        mmt = Path("/sys/class/misc/mm_template/dev")
        if mmt.exists():  # template restores attach from inside the sandbox (root only)
            major, minor = (int(x) for x in mmt.read_text().split(":"))
            os.mknod(f"{st}/dev/mm_template", 0o600 | stat.S_IFCHR, os.makedev(major, minor))
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            os.symlink(f"/proc/self/fd/{i}", f"{st}/dev/{name}")
        os.symlink("/proc/self/fd", f"{st}/dev/fd")
        self._fresh_rw(f"{st}/rw")
        os.chdir(st)
        linux.pivot_root(".", ".old")
        os.chdir("/")
        linux.umount("/.old", linux.MNT_DETACH)
        os.rmdir("/.old")
        linux.mount("proc", "/proc", "proc", PROC_FLAGS)
        linux.sethostname(self.hostname)
        self.baseline = mountpoints()
        self.net_baseline = self._net_state()  # the pool attached the veth before this
        return {"rootfs_s": time.monotonic() - t0, "mounts": self.baseline}, []

    def _fresh_rw(self, at: str = paths.IN_RW) -> None:
        linux.mount("tbrw", at, "tmpfs", linux.MS_NOSUID, f"size={self.rw_size},mode=0755")
        os.mkdir(f"{at}/upper")
        os.mkdir(f"{at}/work")

    # --- starting functions ------------------------------------------------------------------
    def op_prepare(self, msg: JsonObject) -> tuple[JsonObject, list[int]]:
        """Fork the next function's process ahead; the pool keeps its channel."""
        t0 = time.monotonic()
        pid, ours = self.fork_spare()
        return {"pid": pid, "spare_s": time.monotonic() - t0}, [ours.detach()]

    def op_start(self, msg: JsonObject) -> tuple[JsonObject, list[int]]:
        fds, pid = START_HOOKS[str(msg["hook"])](self, msg)
        return {"pid": pid}, fds

    def wait_child(self, pid: int) -> int:
        """Exit status of a child of this init, which the SIGCHLD handler may have reaped first."""
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:
            return os.waitstatus_to_exitcode(self.exits.pop(pid))

    def fork_spare(self) -> tuple[int, socket.socket]:
        ours, theirs = proto.pair()
        gc.freeze()  # a collection in the child would touch (and so copy) every inherited object
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                self.ctl.close()
                for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                self.spare(theirs)
            except BaseException:
                traceback.print_exc()
                os._exit(127)
        theirs.close()
        return pid, ours

    def spare(self, chan: socket.socket) -> NoReturn:
        """In the spare: into fn-ID and its cgroup namespace now; the rest when told to start."""
        linux.set_name("tbsandbox-spare")
        fd = os.open(f"{paths.IN_CGROUP}/{self.fn_cgroup}/cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
        linux.unshare(linux.CLONE_NEWCGROUP)  # rooted at fn-ID: the function sees only its own group
        cgview = linux.detached_mount("cgroup2", CGROUP_ATTRS)  # attached in the rootfs at start
        _warm_up()
        try:
            start = proto.recv(chan)
        except proto.Closed:
            os._exit(0)
        marks = {"go": float(start["go"]), "woke": time.monotonic()}
        try:
            mount_rootfs(str(start["overlay"]))
        except OSError as exc:
            proto.send(chan, {"started": False, "error": str(exc)})
            os._exit(1)
        marks["rootfs"] = time.monotonic()
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(start["env"]).items()})
        self.enter_function_context(marks, cgview)
        runner.serve(chan, marks=marks)

    def enter_function_context(self, marks: dict[str, float], cgview: int) -> None:
        """In the function's process (already in its cgroup leaf and a cgroup namespace rooted
        there): its /sys/fs/cgroup (made ahead, showing only its own usage), then its rootfs."""
        linux.set_name("tbsandbox-fn")
        linux.attach_mount(cgview, f"{paths.IN_ROOT}/sys/fs/cgroup")
        os.close(cgview)
        marks["cgroupns"] = time.monotonic()
        os.chroot(paths.IN_ROOT)
        os.chdir("/")
        marks["chroot"] = time.monotonic()

    # --- cleanup steps inside the sandbox ---------------------------------------------------
    def op_reset(self, msg: JsonObject) -> tuple[JsonObject, list[int]]:
        self._reap(0, None)
        steps = set(msg.get("steps", RESET_STEPS))
        timings: dict[str, float] = {}
        errors: dict[str, str] = {}
        for step in RESET_STEPS:
            if step not in steps:
                continue
            t0 = time.monotonic()
            try:
                getattr(self, "_reset_" + step)()
            except Exception as exc:
                errors[step] = f"{type(exc).__name__}: {exc}"
            timings[step] = time.monotonic() - t0
        exits = {str(k): v for k, v in self.exits.items()}
        self.exits.clear()
        return {"timings": timings, "errors": errors, "exits": exits}, []

    def _reset_mounts(self) -> None:
        """Detach the function's rootfs and everything mounted below it (its own mounts too)."""
        for _ in range(16):
            if paths.IN_ROOT not in mountpoints():
                return
            linux.umount(paths.IN_ROOT, linux.MNT_DETACH)
        raise OSError(f"{paths.IN_ROOT} is still mounted")

    def _reset_upper(self) -> None:
        """A new tmpfs for upper/ and work/: the old one's pages go when the last user does."""
        linux.umount(paths.IN_RW, linux.MNT_DETACH)
        self._fresh_rw()

    def _reset_hostname(self) -> None:
        if socket.gethostname() != self.hostname:
            linux.sethostname(self.hostname)

    def _reset_ipc(self) -> None:
        """A fresh IPC namespace for the next function: SysV objects and POSIX queues are dropped
        with the old one when its last process (already killed) is gone."""
        linux.unshare(linux.CLONE_NEWIPC)

    @staticmethod
    def _net_state() -> JsonObject:
        with open("/proc/net/route") as fh:
            routes = fh.read()
        return {"lo": net.is_up("lo"), "up": net.is_up(net.PEER_IF), "addr": net.get_addr(net.PEER_IF),
                "mtu": net.get_mtu(net.PEER_IF), "routes": routes}

    def _reset_network(self) -> None:
        """Keep the network namespace; put back what a function may have changed in it (link
        state, address, MTU). A change that cannot be undone this cheaply (routes) fails the
        step, and the sandbox is destroyed rather than reused."""
        now, want = self._net_state(), self.net_baseline
        if now == want:
            return
        if not now["lo"]:
            net.set_up("lo")
        if now["mtu"] != want["mtu"]:
            net.set_mtu(net.PEER_IF, int(want["mtu"]))
        if now["addr"] != want["addr"]:
            net.set_addr(net.PEER_IF, str(want["addr"]), self.net_prefix)
        if not now["up"]:
            net.set_up(net.PEER_IF)
        now = self._net_state()
        if now != want:
            raise OSError("network state changed: " + ", ".join(k for k in want if now[k] != want[k]))

    # --- observation --------------------------------------------------------------------------
    def op_inspect(self, msg: JsonObject) -> tuple[JsonObject, list[int]]:
        procs = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/comm") as fh:
                        procs.append({"pid": int(d), "comm": fh.read().strip()})
                except OSError:
                    continue
        return {"mounts": mountpoints(), "baseline": self.baseline, "hostname": socket.gethostname(),
                "env": dict(os.environ), "processes": sorted(procs, key=lambda p: int(p["pid"])),
                "exits": {str(k): v for k, v in self.exits.items()}}, []


# --- the factory --------------------------------------------------------------------------

def spawn(ctl_fd: int, cfg: JsonObject) -> NoReturn:
    """In the factory's child: join the sandbox init's cgroup, new namespaces, fork PID 1."""
    fd = os.open(str(paths.CGROUP_ROOT / paths.CGROUP_TREE / str(cfg["z_cgroup"]) / "cgroup.procs"), os.O_WRONLY)
    os.write(fd, b"0")
    os.close(fd)
    ctl = socket.socket(fileno=ctl_fd)
    t0 = time.monotonic()
    linux.unshare(linux.SANDBOX_NAMESPACES)
    pid = os.fork()
    if pid:
        proto.send(ctl, {"pid": pid, "unshare_s": time.monotonic() - t0})
        os._exit(0)
    Zygote(ctl, cfg).run()


def factory(sock: socket.socket) -> NoReturn:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the intermediate children reap themselves
    gc.freeze()  # everything imported so far: shared with every sandbox init, never collected
    linux.set_name("tbsandbox-fact")
    while True:
        try:
            msg, fds = proto.recv_fds(sock, 1)
        except (proto.Closed, OSError):
            os._exit(0)
        if msg.get("op") != "spawn" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            proto.send(sock, {"ok": False, "error": "expected a spawn request with one channel"})
            continue
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                spawn(fds[0], dict(msg["cfg"]))
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        os.close(fds[0])
        proto.send(sock, {"ok": True, "child": pid})


if __name__ == "__main__":
    factory(socket.socket(fileno=int(sys.argv[1])))
