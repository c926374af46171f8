"""A pip-installed tool, not just a checkout: the wheel carries the project's data (image
recipes, the guest agent, patch series, topologies, scenarios) and, installed outside the
source tree, finds it there and not in the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From a copy of the tree's tracked files: a build/ folder left in the checkout would hide
    # what the packaging itself produces.
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
                   check=True, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    (whl,) = out.glob("cxl_testbed-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return target


def test_the_wheel_carries_the_data_the_tool_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("testbed/templates/domain.xml.j2", "testbed/_data/images/bookworm/packages.txt",
                   "testbed/_data/guest-agent/tbagent/serve.py", "testbed/_data/kernel-patches/series",
                   "testbed/_data/qemu-patches/series", "testbed/_data/testbeds/two-node.yaml",
                   "testbed/_data/scenarios/smoke.yaml"):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def _python(installed: Path, code: str) -> str:
    # The installed copy first on the path, run from a folder outside the checkout; the venv's
    # own site-packages still provides the dependencies.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(installed), "HOME": "/tmp"}
    p = subprocess.run([sys.executable, "-c", code], cwd="/tmp", env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout.strip()


def test_an_installed_copy_reads_its_own_data_outside_the_tree(installed: Path) -> None:
    out = _python(installed, "import testbed, testbed.paths as p; print(testbed.__file__); print(p.DATA)")
    module, data = out.splitlines()
    assert Path(module).is_relative_to(installed) and Path(data) == installed / "testbed" / "_data"


def test_an_installed_copy_loads_a_bundled_topology(installed: Path) -> None:
    code = ("from testbed import paths; from testbed.config import topology as t; "
            "topo = t.load(paths.DATA / 'testbeds' / 'two-node.yaml', t.host_facts()); print(topo.name, topo.image)")
    assert _python(installed, code) == "two-node bookworm"


def _testbed(installed: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(installed), "HOME": "/tmp",
           "CXLTB_STATE_DIR": str(installed / "state"), "CXLTB_CACHE_DIR": str(installed / "cache")}
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd="/tmp", env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_an_installed_copy_validates_and_dry_runs_from_outside_the_tree(installed: Path) -> None:
    data = installed / "testbed" / "_data"
    v = _testbed(installed, "validate", str(data / "testbeds" / "two-node.yaml"))
    assert v.returncode == 0 and "two-node" in v.stdout, v.stderr
    s = _testbed(installed, "validate", str(data / "scenarios" / "smoke.yaml"))
    assert s.returncode == 0 and "smoke" in s.stdout, s.stderr
    d = _testbed(installed, "up", "-f", str(data / "testbeds" / "two-node.yaml"), "--dry-run")
    assert d.returncode == 0 and "<domain" in d.stdout and "Traceback" not in d.stderr, d.stderr
    assert not (installed / "state").exists()  # a dry run creates nothing


def test_an_installed_copy_runs_doctor_from_outside_the_tree(installed: Path) -> None:
    d = _testbed(installed, "doctor", "--json")
    assert d.returncode in (0, 1) and "Traceback" not in d.stderr, d.stderr
    import json

    checks = json.loads(d.stdout)
    assert checks and all({"name", "ok"} <= set(c) for c in checks)


def test_the_agent_installs_as_its_own_package_and_serves(tmp_path: Path) -> None:
    # tbagent and tbproto are wheels of their own (what a bare-metal node installs), and the
    # installed agent answers a request with nothing from the checkout on its path.
    wheels = tmp_path / "wheels"
    for pkg in ("protocol", "guest-agent"):
        src = tmp_path / "src" / pkg
        shutil.copytree(REPO / pkg, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)],
                       check=True, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    "--target", str(site), "tbagent"], check=True, capture_output=True, text=True, timeout=600,
                   stdin=subprocess.DEVNULL)
    assert {"tbagent", "tbproto"} <= {p.name for p in site.iterdir()} and (site / "bin" / "tbagent").exists()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site), "HOME": "/tmp"}
    p = subprocess.run([sys.executable, "-c", "import sys; from tbagent.cli import main; sys.exit(main())", "serve"],
                       input='{"v": 1, "id": 1, "op": "ping", "args": {}}\n', cwd="/tmp", env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    import json

    reply = json.loads(p.stdout.splitlines()[0])
    assert reply["id"] == 1 and reply["ok"] and reply["result"]["protocol"] == 1
