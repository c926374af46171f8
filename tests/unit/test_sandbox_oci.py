"""The crun baseline's bundle: config.json for each variant (no root, no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tbagent.functions import spec
from tbagent.sandbox import oci
from tbagent.sandbox.cgroup import Limits
from tbagent.sandbox.sandbox import limits_for

REPO = Path(__file__).resolve().parents[2]


def test_full_config_is_the_pool_sandbox_as_a_bundle() -> None:
    cfg = oci.config(3, spec("matmul"), limits_for(spec("matmul")))
    assert [n["type"] for n in cfg["linux"]["namespaces"]] == ["mount", "pid", "network", "ipc", "uts", "cgroup"]
    assert cfg["linux"]["cgroupsPath"] == "/tbsandbox/oci-3"
    res = cfg["linux"]["resources"]
    assert res["memory"]["limit"] == 384 << 20 and res["pids"]["limit"] == 64
    assert res["cpu"] == {"period": 100_000, "quota": 100_000}
    assert {m["destination"] for m in cfg["mounts"]} == {"/proc", "/dev", "/sys/fs/cgroup"}
    assert cfg["hostname"] == "oci-3" and cfg["root"] == {"path": "rootfs", "readonly": False}
    assert cfg["process"]["args"] == oci.RUNNER and not cfg["process"]["terminal"]
    assert "OPENBLAS_NUM_THREADS=1" in cfg["process"]["env"]
    assert "CAP_SYS_ADMIN" in cfg["process"]["capabilities"]["bounding"]  # root, as in a pool sandbox


def test_unlimited_values_map_to_oci_conventions() -> None:
    cfg = oci.config(0, spec("hello"), Limits(memory_max=None, cpu_quota=None, pids_max=None))
    res = cfg["linux"]["resources"]
    assert res["memory"]["limit"] == -1 and res["pids"]["limit"] == -1 and "quota" not in res["cpu"]


@pytest.mark.parametrize("variant", oci.VARIANTS[1:])
def test_each_variant_switches_off_one_phase(variant: str) -> None:
    cfg = oci.config(0, spec("hello"), limits_for(spec("hello")), variant)
    full = oci.config(0, spec("hello"), limits_for(spec("hello")))
    changed = {k for k in ("namespaces", "cgroup", "mounts")
               if (k == "namespaces" and cfg["linux"]["namespaces"] != full["linux"]["namespaces"])
               or (k == "cgroup" and "cgroupsPath" not in cfg["linux"])
               or (k == "mounts" and cfg["mounts"] != full["mounts"])}
    assert changed == {{"no-ns": "namespaces", "no-cgroup": "cgroup", "no-mounts": "mounts"}[variant]}
    if variant == "no-ns":
        assert cfg["linux"]["namespaces"] == [{"type": "mount"}] and "hostname" not in cfg


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError):
        oci.config(0, spec("hello"), Limits(), "no-such")
