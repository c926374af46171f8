"""What `up --dry-run` and `run --dry-run` print: per node the domain XML, the QEMU command line,
the objects `up` would create in order, and for a scenario its schedule. Nothing here creates a
file or builds an artefact: artefacts are looked up in the cache read-only, and what is not built
yet is named by where it would go. QEMU's full command line is libvirt's to make: it is asked
for (virConnectDomainXMLToNative, which defines nothing) only from a libvirtd that is already
running; otherwise the arguments we add are printed alone."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.artifacts.bootfiles import Kernel
from testbed.config.topology import Accel, KernelKind, QemuKind, Topology
from testbed.lifecycle import names, render
from testbed.scenario.spec import arrivals
from testbed.scenario.spec.model import Scenario, Step

PLACEHOLDER_PORT = 0  # ssh ports are picked free at `up`
# domain XML -> QEMU's full command line from libvirt, or (None, why not)
NativeArgv = Callable[[str], tuple[str | None, str]]


def no_native_argv(xml: str) -> tuple[str | None, str]:
    return None, "not asked"


@dataclass(frozen=True)
class Artifacts:
    """The kernel and emulator a topology would boot, and notes on what is not built yet."""

    kernel: Kernel
    emulator: Path
    notes: tuple[str, ...] = ()


def locate_artifacts(topo: Topology) -> Artifacts:
    """The newest cached kernel and QEMU of the topology's kinds, read-only (no build, no download)."""
    from testbed import paths
    from testbed.artifacts import cache, qemu

    notes: list[str] = []
    kroot = paths.cache_root() / "kernels"
    kernels = [k for k in cache.listing(kroot) if k.get("kind") == str(topo.kernel)] if kroot.is_dir() else []
    if topo.kernel is KernelKind.CUSTOM:  # the user's own bzImage: shown as given, read at `up`
        kern = Kernel(KernelKind.CUSTOM, "(your build)", Path(topo.kernel_path).parent)
        notes.append(f"kernel {topo.kernel_path}" + (f" with modules {topo.modules}" if topo.modules else
                                                     " (no modules: only what is built in)"))
    elif kernels:
        k = kernels[-1]
        kern = Kernel(KernelKind(topo.kernel), str(k.get("release", "?")), Path(k["dir"]))
    else:
        kern = Kernel(KernelKind(topo.kernel), "(not built)", kroot / f"{topo.kernel}-(not built)")
        notes.append(f"kernel {topo.kernel} is not built yet: `up` builds it first (`testbed kernel build`)")
    if topo.qemu is QemuKind.DEBIAN:
        emulator = qemu.DEBIAN_EMULATOR
        if not emulator.exists():
            notes.append(f"{emulator} is missing: run `make deps`")
    else:
        qroot = paths.cache_root() / "qemu"
        builds = [q for q in cache.listing(qroot) if str(q.get("kind")) == str(QemuKind.PATCHED)] if qroot.is_dir() else []
        if builds:
            emulator = Path(builds[-1]["dir"]) / "bin" / "qemu-system-x86_64"
        else:
            emulator = qroot / "patched-(not built)" / "bin" / "qemu-system-x86_64"
            notes.append("the patched QEMU is not built yet: `up` builds it first (`testbed qemu build`)")
    return Artifacts(kern, emulator, tuple(notes))


def plan(topo: Topology) -> list[str]:
    """The objects `up` creates, in the order it creates them (and records them for rollback)."""
    layout = names.Layout(topo.name)
    steps = [f"state dir {layout.root} (state.json, the intent log, written before each object)",
             f"ssh key {layout.client_key}, pinned host keys {layout.known_hosts}",
             f"libvirt network {names.network(topo.name)} (bridge {names.bridge(topo.name)}, isolated)"]
    steps += [f"backing file {names.shm_file(topo.name, m)} ({m.size >> 20} MiB, MHD {m.name}, heads "
              f"{', '.join(m.heads)})" for m in topo.mhds]
    for node in topo.nodes:
        steps.append(f"node {node.name}: overlay {layout.overlay(node.name)}, seeds in {layout.node_dir(node.name)}, "
                     f"console {layout.console(node.name)}")
        steps.append(f"libvirt domain {names.domain(topo.name, node.name)} (started)")
    return steps


def topology_text(topo: Topology, arts: Artifacts, native_argv: NativeArgv = no_native_argv) -> str:
    accel = Accel.TCG if topo.accelerator is Accel.AUTO else topo.accelerator
    layout = names.Layout(topo.name)
    parts = [f"# dry run of testbed {topo.name} ({topo.source}): nothing is created"]
    parts += [f"# note: {n}" for n in arts.notes]
    if topo.accelerator is Accel.AUTO:
        parts.append("# note: accelerator auto is probed at `up` (KVM if it works); shown here as tcg")
    parts.append(f"# ssh ports are picked free at `up`; shown here as {PLACEHOLDER_PORT}")
    parts.append("\n## plan (in order)")
    parts += [f"{i}. {step}" for i, step in enumerate(plan(topo), 1)]
    for node in topo.nodes:
        xml = render.domain_xml(topo, node, accel=accel, kernel=arts.kernel, emulator=arts.emulator,
                                ssh_port=PLACEHOLDER_PORT, layout=layout)
        parts.append(f"\n## node {node.name}: domain XML")
        parts.append(xml.rstrip("\n"))
        parts.append(f"\n## node {node.name}: QEMU")
        parts.append(f"emulator: {arts.emulator}")
        parts.append("arguments added to libvirt's own (qemu:commandline):")
        parts.append(shlex.join(render.qemu_args(topo, node, PLACEHOLDER_PORT, layout)))
        argv, why = native_argv(xml)
        if argv is not None:
            parts.append("full command line (libvirt's domxml-to-native; paths under "
                         "/var/lib/libvirt/qemu/domain--1-* are made at start):")
            parts.append(argv.rstrip("\n"))
        else:
            parts.append(f"(no full command line: {why}; save the XML and run "
                         "`virsh domxml-to-native qemu-argv FILE` once libvirtd runs)")
    return "\n".join(parts) + "\n"


def _invocations(scn: Scenario, wl_index: int, mode: str, rep: int) -> str:
    wl = scn.workloads[wl_index]
    sched = wl.arrival.schedule(arrivals.unit_rng(scn.seed, mode, wl.name, rep), wl.base)
    warmup = wl.warmup if wl.warmup is not None else scn.warmup
    extra = f" + {warmup} warm-up" if warmup else ""
    if isinstance(sched, arrivals.OpenLoop):
        span = f" over {sched.events[-1].offset:.1f}s" if sched.events else ""
        return f"{len(sched.events)} invocations{extra} (open loop{span})"
    if sched.count is not None:
        return f"{sched.count} invocations{extra} (closed loop, {sched.clients} clients)"
    return f"invocations for {sched.duration:g}s{extra} (closed loop, {sched.clients} clients)"


def schedule_lines(scn: Scenario) -> list[str]:
    """Units in the order the executor runs them, each with its steps and invocation count."""
    from testbed.scenario.kinds import KINDS

    lines = [f"## schedule of scenario {scn.name}: {scn.repetitions} repetition(s) x {len(scn.modes)} mode(s) x "
             f"{len(scn.workloads)} workload(s)" + (" (workloads of a mode in parallel)" if scn.parallel_workloads else "")]
    if scn.setup:
        lines.append("setup: " + ", ".join(_steps(scn.setup)))
    set_up: set[str] = set()
    n = 0
    for rep in range(scn.repetitions):
        for mode in scn.modes:
            if mode.setup and mode.name not in set_up:
                lines.append(f"setup {mode.name}: " + ", ".join(_steps(mode.setup)))
                set_up.add(mode.name)
            for i, wl in enumerate(scn.workloads):
                n += 1
                placement = scn.placement_of(mode, wl)
                steps = [f"prepare on {placement.create_on}"] if KINDS[wl.kind].has_prepare(wl.spec) else []
                steps.append(f"{_invocations(scn, i, mode.name, rep)} on {', '.join(placement.invoke_on)}")
                lines.append(f"unit {n}: {mode.name} · {wl.name} · rep {rep + 1}/{scn.repetitions} ({wl.kind}): "
                             + "; ".join(steps))
    return lines


def _steps(steps: Sequence[Step]) -> list[str]:
    return [f"{s.name} ({s.kind} on {', '.join(s.on)})" for s in steps]
