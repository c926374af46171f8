"""Workload kinds: what one invocation (or one set-up step) does on a node.

The registry: every kind module is imported here and KINDS lists its kind by name.
  exec      an argv through the Node interface (kinds.exec)
  agent     a JSON-lines request to `tbagent serve` (kinds.agent)
  restore   function snapshots in the CXL store (kinds.restore)
  sandbox   the sandbox pool (kinds.sandbox)
  llm       model checkpoints in the MHD and inference instances, ServerlessLLM (kinds.llm)
  kv        prefill/decode disaggregation over the MHD's KV block pool, Mooncake (kinds.kv)
What a kind is and what every kind shares: kinds.base.
"""

from __future__ import annotations

from testbed.scenario.kinds.agent import AgentKind
from testbed.scenario.kinds.base import AnyKind
from testbed.scenario.kinds.exec import ExecKind
from testbed.scenario.kinds.kv import KvKind
from testbed.scenario.kinds.llm import LlmKind
from testbed.scenario.kinds.restore import RestoreKind
from testbed.scenario.kinds.sandbox import SandboxKind

KINDS: dict[str, AnyKind] = {k.name: k for k in (ExecKind(), AgentKind(), RestoreKind(), SandboxKind(), LlmKind(), KvKind())}
