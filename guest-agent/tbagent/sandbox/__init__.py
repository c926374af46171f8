"""Sandbox reuse (TrEnv's second half): a pool of type-agnostic sandboxes, repurposed per function.

A sandbox is a sandbox init process (`zygote`, PID 1 of its own mount, PID, network, IPC and UTS
namespaces), a cgroup v2 leaf for the function's processes, a veth pair with a /30 link-local
address, and a root filesystem assembled with overlayfs (shared base + function layer + a fresh
upper directory on the sandbox's own tmpfs). See `sandbox.py` for the repurpose and cleanup steps
and `pool.py` for the pool; `server.py` is the per-node pool daemon (`tbagent sandbox serve`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the function runner imports this package, keep it light
if TYPE_CHECKING:
    from tbagent.commands import Subcommands



def register(sub: Subcommands) -> None:
    """`tbagent sandbox ...`; the command line is imported only when the agent's parser is built."""
    from tbagent.sandbox.cli import register as register_cli

    register_cli(sub)
