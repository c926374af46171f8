"""Where the sandbox machinery keeps its state on a node. Module-level so tests can repoint them."""

from __future__ import annotations

from pathlib import Path

RUN = Path("/run/tbsandbox")            # tmpfs: sockets, logs, stage mount point, OCI bundles
SOCKET = RUN / "pool.sock"              # the pool daemon's control socket (JSON lines)
LOCK = RUN / "pool.lock"                # one pool owner per node (daemon or in-process bench)
LOGS = RUN / "log"
STAGE = RUN / "stage"                   # each sandbox mounts its private stage tmpfs here, in its own mount ns
OCI = RUN / "oci"                       # OCI bundles of the crun baseline
CRUN_ROOT = RUN / "crun"                # crun's state directory for the baseline
STORE = Path("/var/lib/tbagent/sandbox/layers")  # base layer + function layers (read-only lowers)
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_TREE = "tbsandbox"               # /sys/fs/cgroup/tbsandbox/{z-ID,fn-ID,oci-N}

# Paths inside a sandbox's stage (its mount namespace root after pivot_root).
IN_STORE = "/store"
IN_CGROUP = "/cg"
IN_DEV = "/dev"
IN_RW = "/rw"
IN_ROOT = "/root"
FUNCTION_DIR = "/function"              # inside the function's root: handler.py and meta.json
