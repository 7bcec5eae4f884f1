"""The built wheel, installed as a user installs it, finds its boards, HLS headers and
driver (issue 14, item 2).

Builds the wheel from a copy of the source tree (``pip wheel --no-deps
--no-build-isolation``: offline, torch is not touched), installs it with ``--no-deps`` into a
fresh venv whose only other path is this interpreter's site-packages (a ``.pth`` line: torch,
hls4ml and onnx come from the machine, and no ``.pth`` of the machine, such as an editable
install's, is read), and from a temporary directory outside the repository runs
qsp-estimate on every board, ``qsp-compile --dry-run``, a real ``qsp-compile`` with the
C-simulation check, ``python -m qsp.deploy`` (its package's csim-verified test vectors) and
the whole flow (``scripts/flow_check.sh``: ``qsp flow --epochs 5``, then its verify.json and
deploy test vectors checked). Every path qsp uses must lie inside the venv, none
inside the repository.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import needs_system

REPO = Path(__file__).resolve().parent.parent
#: what the wheel must carry under qsp/_data, by repository folder
DATA = {"boards": "*.yaml", "hls": "*.h", "deploy": "pynq/*.py"}
HAS_GXX = shutil.which("g++") is not None


def _source_files() -> list[Path]:
    """The files a fresh clone has (tracked and untracked-not-ignored), or, with no git (the
    image's test stage), the tree less build outputs."""
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                             check=True, capture_output=True).stdout.decode()
        return [Path(p) for p in out.split("\0") if p and (REPO / p).is_file()]
    skip = {".git", "build", "dist", "runs", "__pycache__", ".pytest_cache"}
    return [p.relative_to(REPO) for p in REPO.rglob("*")
            if p.is_file() and not (set(p.relative_to(REPO).parts) & skip) and ".egg-info" not in str(p)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for rel in _source_files():
        if rel.parts[0] in ("tests", "benchmarks", "docs"):
            continue  # not needed to build; keeps the copy small
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", str(src), "-w", str(dist)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = dist.glob("qsp-*.whl")
    return whl


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory):
    """(python, bin dir, venv dir, environment) of a fresh venv with the wheel installed."""
    root = tmp_path_factory.mktemp("venv") / "v"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(root)
    py = root / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    # this interpreter's site-packages (those of sys.path too: a venv whose base comes in by a .pth)
    base = [p for p in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"],
                                                                sysconfig.get_paths()["platlib"]]
                                     + [q for q in sys.path if q.endswith(("site-packages", "dist-packages"))])
            if Path(p).is_dir() and not str(Path(p).resolve()).startswith(str(REPO))]
    (purelib / "_machine_site.pth").write_text("\n".join(base) + "\n")
    # --ignore-installed: a qsp on the machine (the image's, an editable one) is neither used nor touched
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--ignore-installed", "-q", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QSP_BOARDS_DIR", "PYTHONHOME")}
    e["PATH"] = f"{root / 'bin'}{os.pathsep}{e.get('PATH', '')}"
    return py, root / "bin", root, e


def _run(cmd, cwd, env, timeout=300):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def test_wheel_carries_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, pat in DATA.items():
        want = {f"qsp/_data/{folder}/{p.relative_to(REPO / folder).as_posix()}" for p in (REPO / folder).glob(pat)}
        assert want and want <= names, sorted(want - names)
    assert "qsp/_data/deploy/README.md" in names
    assert not any(n.startswith(("boards/", "hls/", "deploy/", "tests/")) for n in names)


def test_installed_package_uses_its_own_data(env, tmp_path):
    py, _bin, root, e = env
    out = _run([py, "-c", "import json, sys, qsp, qsp.resources as r, qsp.compile.extension as x, qsp.boards as b\n"
                "print(json.dumps({'sys_path': sys.path, 'qsp': qsp.__file__, 'hls': str(x.HLS_DIR),\n"
                "  'boards': [str(d) for d in b.builtin_dirs()], 'deploy': str(r.data_dir('deploy')),\n"
                "  'n_boards': len(b.known_boards())}))"], tmp_path, e)
    info = json.loads(out.strip().splitlines()[-1])
    assert not [p for p in info["sys_path"] if p.startswith(str(REPO))], info["sys_path"]
    for key in ("qsp", "hls", "deploy"):
        assert info[key].startswith(str(root)), (key, info[key])
    assert info["boards"] and all(d.startswith(str(root)) for d in info["boards"])
    assert info["n_boards"] == len(list((REPO / "boards").glob("*.yaml")))


def test_estimate_and_dry_run_from_a_temp_dir(env, mlp_bundle, tmp_path):
    _py, bindir, _root, e = env
    bundle = tmp_path / "bundle"
    shutil.copytree(mlp_bundle, bundle)
    out = _run([bindir / "qsp-estimate", bundle, "--board", "all", "--out", tmp_path / "est"], tmp_path, e)
    for f in (REPO / "boards").glob("*.yaml"):
        assert f.stem in out, f"board {f.stem} missing from qsp-estimate --board all"
    assert (tmp_path / "est" / "estimate.json").exists() and (tmp_path / "est" / "report.html").exists()
    import json  # the wheel carries boards/power/families.yaml: every board has figures or says what was searched
    for b in json.loads((tmp_path / "est" / "estimate.json").read_text())["boards"]:
        assert b["energy_fpga"]["available"] or b["energy_fpga"]["searched"], b["board"]
    out = _run([bindir / "qsp-compile", bundle, "--board", "pynq", "--dry-run"], tmp_path, e)
    assert "pynq-z2" in out


@needs_system(HAS_GXX, "g++ not installed (the C-simulation needs it)")
@pytest.mark.slow
def test_compile_with_csim_and_deploy_from_a_temp_dir(env, mlp_bundle, tmp_path):
    py, bindir, root, e = env
    bundle = tmp_path / "bundle"
    shutil.copytree(mlp_bundle, bundle)
    _run([bindir / "qsp-compile", bundle, "--board", "pynq-z2", "--out", tmp_path / "hls", "--max-inputs", "16"],
         tmp_path, e, timeout=600)
    v = json.loads(next((tmp_path / "hls").rglob("verify.json")).read_text())
    assert v["summary"]["ok"] and v["mismatches"] == 0 and v["inputs"] == 16, v["summary"]
    assert any("csim" in p or "testbench" in p or "predict" in p for p in v["summary"]["paths"]), v["summary"]
    # our HLS headers went into the project from the installed package
    mask_h = list((tmp_path / "hls").rglob("nnet_qsp_mask.h"))
    assert mask_h and mask_h[0].read_text() == (REPO / "hls" / "nnet_qsp_mask.h").read_text()
    _run([py, "-m", "qsp.deploy", bundle, "--project", tmp_path / "hls" / "accelerator_prj", "--out",
          tmp_path / "deploy"], tmp_path, e)
    assert (tmp_path / "deploy" / "qsp_driver.py").read_text() == (REPO / "deploy/pynq/qsp_driver.py").read_text()
    assert (tmp_path / "deploy" / "README.md").exists()
    # the package's test vectors: the 16 inputs and the C simulation's outputs for them
    tb = (tmp_path / "deploy" / "tb_data" / "tb_output_predictions.dat").read_text()
    assert len(tb.splitlines()) == 16
    assert tb == (tmp_path / "hls" / "accelerator_prj" / "tb_data" / "tb_output_predictions.dat").read_text()


@needs_system(HAS_GXX, "g++ not installed (the C-simulation needs it)")
@pytest.mark.slow
def test_flow_check_from_a_temp_dir(env, tmp_path):
    """The whole flow (train digits -> compile -> csim -> three-way verify -> deploy ->
    estimate) with the installed wheel, through the csim check script CI and the image run."""
    _py, bindir, root, e = env
    for tool in ("qsp", "python"):
        assert shutil.which(tool, path=e["PATH"]) == str(bindir / tool)
    out = _run(["bash", REPO / "scripts" / "flow_check.sh", "runs/flow", "--epochs", "5"], tmp_path, e, timeout=600)
    v = json.loads((tmp_path / "runs" / "flow" / "hls" / "verify.json").read_text())
    assert v["summary"]["ok"] and v["mismatches"] == 0 and v["inputs"] > 300, v["summary"]
    assert (tmp_path / "runs" / "flow" / "estimate" / "report.html").exists()
    assert (tmp_path / "runs" / "flow" / "deploy" / "qsp_driver.py").exists()
    assert "verify.json:" in out
    n = len((tmp_path / "runs" / "flow" / "deploy" / "tb_data" / "tb_input_features.dat").read_text().splitlines())
    assert n == v["inputs"] and f"deploy: {n} csim-verified test vectors" in out
