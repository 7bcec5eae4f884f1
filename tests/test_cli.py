"""The command line: ``qsp STAGE`` dispatch, ``--version`` everywhere, exit statuses
(0 ok, 1 verification/task failed, 2 bad input, 3 a tool failed), qsp-flow's
``runs/latest`` and progress lines when stdout is a pipe."""
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qsp
from qsp import cli
from qsp.errors import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_TOOL, BoardError, BundleError, ConfigError, DataError,
                        QspError, ToolError, VerificationError, exit_code)

REPO = Path(__file__).resolve().parents[1]

#: the stage, its stand-alone entry point (argv prefix) and an option only its help shows
STAGES = {
    "train": (["qsp-train"], "--weight-bits"),
    "compile": (["qsp-compile"], "--io-type"),
    "estimate": (["qsp-estimate"], "--as-trained"),
    "deploy": ([sys.executable, "-m", "qsp.deploy"], "--interface"),
    "flow": (["qsp-flow"], "--skip-estimate"),
}


def _env(**extra):
    """The environment of a subprocess that imports qsp from this checkout."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "toolchain"), env.get("PYTHONPATH", "")])
    return env


def _qsp(*args, cwd=None, **env):
    """``qsp ARGS`` (python -m qsp: the same main as the console script)."""
    return subprocess.run([sys.executable, "-m", "qsp", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(**env), timeout=600)


def _script(argv):
    """A console script when installed, else its module (python -m)."""
    if argv[0] == sys.executable:
        return argv
    if shutil.which(argv[0]):
        return argv
    mod = {"qsp-train": "qsp.train.cli", "qsp-compile": "qsp.compile.cli", "qsp-estimate": "qsp.estimate.cli",
           "qsp-flow": "qsp.flow"}[argv[0]]
    return [sys.executable, "-m", mod, *argv[1:]]


# ---------------------------------------------------------------------------- --version, --help
def test_version():
    r = _qsp("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"qsp {qsp.__version__} (torch ")
    assert "hls4ml " in r.stdout
    assert cli.version() == r.stdout.strip()


@pytest.mark.parametrize("stage", list(STAGES))
def test_entry_point_version(stage, capsys):
    mod, fn = cli.COMMANDS[stage]
    with pytest.raises(SystemExit) as e:  # each entry point's own main
        getattr(importlib.import_module(mod), fn)(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == cli.version()


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help(stage, capsys):
    """``qsp STAGE --help`` is the stage's own help (its prog, its options, the exit statuses)."""
    argv, option = STAGES[stage]
    assert cli.main([stage, "--help"]) == 0
    out = capsys.readouterr().out
    prog = "python -m qsp.deploy" if stage == "deploy" else argv[0]
    assert out.startswith(f"usage: {prog} ")
    assert option in out and "--version" in out
    assert "exit status:" in out and "3  a tool failed" in out
    mod, fn = cli.COMMANDS[stage]
    with pytest.raises(SystemExit) as e:  # the stand-alone entry point prints the same
        getattr(importlib.import_module(mod), fn)(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out == out


def test_entry_point_script():
    """The stand-alone entry points run as commands (console script, or python -m)."""
    r = subprocess.run(_script(["qsp-compile", "--version"]), capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and r.stdout.startswith("qsp "), r.stderr


def test_qsp_help_and_bad_stage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(s in out for s in STAGES) and "exit status:" in out
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["synthesize"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_console_script_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert 'qsp = "qsp.cli:main"' in text


# ---------------------------------------------------------------------------- exit statuses
def test_exit_code_classes():
    assert exit_code(ToolError("g++")) == EXIT_TOOL == 3
    assert exit_code(VerificationError("differs")) == EXIT_FAILED == 1
    for e in (ConfigError("k"), BundleError("b"), BoardError("b"), DataError("d")):
        assert exit_code(e, other=EXIT_FAILED) == EXIT_BAD_INPUT == 2
    assert exit_code(QspError("x")) == 2 and exit_code(QspError("x"), other=1) == 1


@pytest.mark.parametrize("stage", ["compile", "estimate", "deploy"])
def test_missing_bundle_is_bad_input(stage, tmp_path, capsys):
    argv = [str(tmp_path / "no-such-bundle")] + (["--out", str(tmp_path / "d")] if stage == "deploy" else [])
    assert cli.main([stage, *argv]) == 2
    assert "no-such-bundle" in capsys.readouterr().err


def test_bad_config_key_is_bad_input(tmp_path):
    (tmp_path / "run.yaml").write_text("weight_bitz: 4\n")
    r = subprocess.run(_script(["qsp-train", "--config", str(tmp_path / "run.yaml")]), capture_output=True,
                       text=True, env=_env(), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "unknown key 'weight_bitz'" in r.stderr and "Traceback" not in r.stderr
    assert cli.main(["train", "--weight-bits", "eight"]) == 2  # a bad value, in-process


def test_missing_compiler_is_a_tool_failure(mlp_bundle, tmp_path, monkeypatch, capsys):
    from qsp.compile import csim

    monkeypatch.setattr(csim, "CXX", "no-such-g++")
    csim.cxx_flags.cache_clear()
    try:
        rc = cli.main(["compile", str(mlp_bundle), "--out", str(tmp_path / "hls"), "--board", "arty-a7-35"])
    finally:
        csim.cxx_flags.cache_clear()
    assert rc == 3
    assert "no-such-g++ not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------- flow, progress
def test_flow_points_runs_latest(tmp_path):
    """``qsp flow`` (one epoch, real): runs/latest is its run, and README's next command works."""
    r = _qsp("flow", "--epochs", "1", "--skip-estimate", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink()
    runs = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("digits-flow-")]
    assert len(runs) == 1 and latest.resolve() == runs[0].resolve()
    assert (latest / "bundle").is_dir() and (latest / "hls" / "verify.json").is_file()
    r = _qsp("compile", "runs/latest/bundle", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_progress_lines_when_piped(tmp_path):
    """stdout a pipe: plain progress lines (step, epoch, loss, metric) instead of tqdm's bar."""
    argv = _script(["qsp-train", "--epochs", "2", "--train-limit", "200", "--float-baseline", "false",
                    "--out", str(tmp_path / "run")])
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                       env=_env(QSP_PROGRESS_SECONDS="0"))  # a line every step
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("progress: ")]
    assert len(lines) >= 4, r.stdout
    assert lines[0].startswith("progress: epoch 1/2  step 1/") and "loss " in lines[0]
    assert "val accuracy -" in lines[0]  # no validation metric before the first epoch ends
    assert any(ln.startswith("progress: epoch 2/2") and "val accuracy -" not in ln for ln in lines)
    assert "\r" not in r.stdout and "it/s" not in r.stderr  # no bar when not a terminal


def test_readme_compile_and_estimate_lines_run(mlp_bundle, tmp_path, capsys):
    """README's "Using the stages" qsp-compile lines (BUNDLE: a real bundle) each run with
    --dry-run (arguments, board, plan), and its qsp-estimate line runs as written."""
    import shlex

    from qsp.compile.cli import main as compile_main
    from qsp.estimate.cli import main as estimate_main

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Using the stages", 1)[1].split("```", 2)[1]
    lines = [ln.split("#")[0].strip() for ln in block.splitlines()]
    sub = lambda ln: [str(mlp_bundle) if a in ("BUNDLE", "runs/latest/bundle") else  # noqa: E731
                      str(tmp_path / a) if a.startswith("runs/") else a for a in shlex.split(ln)[1:]]
    comp = [ln for ln in lines if ln.startswith("qsp-compile") and "--hls-config" not in ln]  # that one: test_hls_config
    assert len(comp) >= 4
    for ln in comp:
        assert compile_main(sub(ln) + ["--dry-run"]) == 0, ln
    est = [ln for ln in lines if ln.startswith("qsp-estimate")]
    assert est and all(estimate_main(sub(ln)) == 0 for ln in est)
    assert (tmp_path / "runs" / "est" / "estimate.json").is_file()
