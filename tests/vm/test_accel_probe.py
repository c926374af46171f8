"""The accelerator probe, booted for real: under TCG (which runs everywhere) its CXL stage
commits a region and uses it with SSE2/AVX2 loads and stores, and the same boot without a CXL
window fails at the named step. Whether KVM passes depends on the machine (on this project's
machines KVM guests die in early boot); the probe must say which stage failed."""

from __future__ import annotations

import pytest

from testbed.artifacts import kernel, qemu
from testbed.config.topology import KernelKind
from testbed.lifecycle import accel


@pytest.fixture(scope="module")
def parts() -> tuple[kernel.Kernel, qemu.Emulator]:
    return kernel.resolve(KernelKind.DEBIAN), qemu.build()


def test_probe_uses_cxl_memory_with_vector_instructions(parts: tuple[kernel.Kernel, qemu.Emulator]) -> None:
    kern, emu = parts
    ok, why = accel.probe(kern, emu.path, "tcg", 180)
    assert ok, why


def test_probe_cxl_stage_can_fail(parts: tuple[kernel.Kernel, qemu.Emulator], monkeypatch: pytest.MonkeyPatch) -> None:
    kern, emu = parts
    real = accel.probe_argv

    def no_window(*args: object) -> list[str]:
        argv = real(*args)  # type: ignore[arg-type]
        i = argv.index("-M")
        return argv[:i] + argv[i + 2:]

    monkeypatch.setattr(accel, "probe_argv", no_window)
    ok, why = accel.probe(kern, emu.path, "tcg", 180)
    assert not ok and "could not use CXL memory: CXLTB-PROBE-CXL-FAIL create_ram_region" in why, why


def test_kvm_probe_names_the_stage(parts: tuple[kernel.Kernel, qemu.Emulator]) -> None:
    _, emu = parts
    ok, why = accel.probe_kvm(emu.path)
    assert ok == why.startswith("guest booted under kvm and used CXL memory"), why
    if not ok:
        assert why.startswith(("/dev/kvm does not exist", "guest did not boot under kvm", "guest did not finish",
                               "guest booted under kvm but could not use CXL memory")), why
