"""Fuzzing the command lines (issue 17.8, CLI part): hypothesis (derandomized) throws flags,
YAML configs and board files at qsp-train --print-config, qsp-compile --dry-run,
qsp-estimate and the board loader. Each case must end in exit 0 (a valid input, checked
against the rule it must satisfy) or exit 2 with a one-line ``error:`` message: never a
traceback, never a hang, never an invalid input accepted. CPU-cheap: parsing and
validation paths only (no training, no C++)."""
from __future__ import annotations

import math
import threading

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsp.boards import board_from_dict, builtin_dirs
from qsp.errors import BoardError

FUZZ = settings(derandomize=True, deadline=None, max_examples=60, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _call(main, argv, timeout=30):
    """(exit status, stderr text) of main(argv) in-process; a hang or a traceback fails."""
    import contextlib
    import io

    box, err = {}, io.StringIO()

    def target():
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                box["rc"] = main(argv)
        except SystemExit as e:
            box["rc"] = e.code
        except BaseException as e:  # noqa: BLE001
            box["exc"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"hang: {argv}"
    assert "exc" not in box, f"traceback for {argv}: {box.get('exc')!r}"
    return box["rc"], err.getvalue()


def _refused(rc, err, argv):
    assert rc == 2, (argv, rc, err)
    assert "Traceback" not in err and "error" in err, (argv, err)


# ============================================================================ qsp-train flags
INT_KEYS = {"prune_start": 0, "quant_delay": 0, "window": 1, "prune_interval": 1, "prune_repetition": 1,
            "epochs": 1, "batch_size": 1, "seed": 0, "max_test": 0, "checkpoint_every": 0}
NUMBERS = st.one_of(st.integers(-10 ** 12, 10 ** 12), st.sampled_from([-1, 0, 1, 2 ** 32, 2 ** 63]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["nan", "inf", "-inf", "1e999"]))
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


def _valid_int(key, v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            return False
    if isinstance(v, float):
        if not (math.isfinite(v) and v.is_integer()):
            return False
        v = int(v)
    ok = v >= INT_KEYS[key]
    return ok and (key != "seed" or v < 2 ** 32)


@FUZZ
@given(key=st.sampled_from(sorted(INT_KEYS)), value=NUMBERS)
def test_fuzz_train_integer_flags(key, value):
    from qsp.train.cli import main

    argv = ["--" + key.replace("_", "-") + "=" + str(value), "--print-config"]
    rc, err = _call(main, argv)
    if rc == 0:
        assert _valid_int(key, str(value)), f"accepted {argv}"
    else:
        _refused(rc, err, argv)
        assert key in err, err


@FUZZ
@given(key=st.sampled_from(["lr", "weight_decay", "weight_sparsity", "act_sparsity", "val_fraction",
                            "float_metric", "order_trial_fraction"]), value=NUMBERS)
def test_fuzz_train_number_flags(key, value):
    from qsp.train.cli import main

    argv = ["--" + key.replace("_", "-") + "=" + str(value), "--print-config"]
    rc, err = _call(main, argv)
    if rc == 0:
        v = float(str(value))
        assert math.isfinite(v), f"accepted non-finite {argv}"
        if key in ("weight_sparsity", "act_sparsity"):
            assert 0 <= v < 1
        if key == "lr":
            assert v > 0
    else:
        _refused(rc, err, argv)
        assert key in err, err


@FUZZ
@given(lo=st.one_of(st.floats(allow_nan=True), st.sampled_from(["nan", "x", ""])),
       hi=st.one_of(st.floats(allow_nan=True), st.sampled_from(["nan", "1", "2"])))
def test_fuzz_train_quantiles(lo, hi):
    from qsp.train.cli import main

    argv = [f"--quantiles={lo},{hi}", "--print-config"]
    rc, err = _call(main, argv)
    if rc == 0:
        ql, qh = float(lo), float(hi)
        assert 0 <= ql < qh <= 1, f"accepted {argv}"
    else:
        _refused(rc, err, argv)
        assert "quantiles" in err


@FUZZ
@given(model=st.one_of(st.sampled_from(["os:system", "subprocess:getoutput", "builtins:exec", "shutil:rmtree",
                                        "torch:load", "numpy:load", "pickle:loads", "qsp.compile.csim:run",
                                        "qsp.cli:main", "importlib:import_module", ":", "a:", ":b", "x y:z"]),
                       st.builds(lambda a, b: f"{a}:{b}", TEXT, TEXT)))
def test_fuzz_model_factories_refused(model):
    from qsp.train.cli import main

    argv = [f"--model={model}", "--model-kwargs", "{cmd: 'true'}", "--print-config"]
    rc, err = _call(main, argv)
    _refused(rc, err, argv)  # none of these is a registered model or a user module's factory
    assert "model" in err


@FUZZ
@given(doc=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), TEXT),
                        lambda c: st.one_of(st.lists(c, max_size=3),
                                            st.dictionaries(st.sampled_from(["epochs", "seed", "window", "quantiles",
                                                                             "weight_bits", "model", "dense", "x"]),
                                                            c, max_size=3)),
                        max_leaves=8))
def test_fuzz_train_config_files(doc, tmp_path_factory):
    from qsp.train.cli import main

    f = tmp_path_factory.mktemp("cfg") / "run.yaml"
    f.write_text(yaml.safe_dump(doc) if not isinstance(doc, float) or math.isfinite(doc) else "x: .nan\n")
    rc, err = _call(main, ["--config", str(f), "--print-config"])
    if rc != 0:
        _refused(rc, err, doc)


# ============================================================================ boards
def _pynq():
    return yaml.safe_load((builtin_dirs()[0] / "pynq-z2.yaml").read_text())


BOARD_NUMBERS = ["lut", "ff", "dsp", "bram18k", "bram36k", "bram_mb", "uram", "clock_mhz"]


@FUZZ
@given(field=st.sampled_from(BOARD_NUMBERS + ["offchip.size_mb", "offchip.bandwidth_gb_s", "aliases", "name",
                                              "part", "sources", "offchip"]),
       value=st.one_of(NUMBERS, st.none(), st.booleans(), TEXT, st.lists(TEXT, max_size=2)))
def test_fuzz_board_fields(field, value):
    d = _pynq()
    if field.startswith("offchip."):
        d["offchip"] = dict(d["offchip"], **{field.split(".")[1]: value})
    else:
        d[field] = value
    try:
        b = board_from_dict(d, "fuzz")
    except BoardError as e:
        assert field.split(".")[-1] in str(e) or "field" in str(e), str(e)
        return
    for k in BOARD_NUMBERS:  # accepted: every number finite and in range
        v = getattr(b, k)
        assert not isinstance(v, bool) and math.isfinite(v) and v >= 0, (k, v)
    assert b.clock_mhz > 0 and b.lut > 0 and b.dsp > 0
    assert math.isfinite(b.offchip.size_mb) and b.offchip.size_mb > 0
    assert math.isfinite(b.offchip.bandwidth_gb_s) and b.offchip.bandwidth_gb_s > 0
    assert all(isinstance(a, str) for a in b.aliases)


# ============================================================================ qsp-compile / qsp-estimate flags
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from tests.bundles import build_bundle

    return build_bundle("mlp", steps=5, n_test=8).write(tmp_path_factory.mktemp("fz") / "bundle")


@settings(derandomize=True, deadline=None, max_examples=25, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flags=st.lists(st.sampled_from([["--max-inputs", "0"], ["--max-inputs", "-5"], ["--max-inputs", "x"],
                                       ["--board", "nosuch"], ["--board", "pynq"], ["--board", ""],
                                       ["--io-type", "io_bogus"], ["--strategy", "auto"], ["--backend", "Nope"],
                                       ["--out", "/proc/qsp-no/out"], ["--dry-run"], ["--no-transforms"]]),
                      min_size=1, max_size=3))
def test_fuzz_compile_flags(flags, bundle_dir):
    from qsp.compile.cli import main

    argv = [str(bundle_dir)] + [a for f in flags for a in f]
    if "--dry-run" not in argv:  # a full compile is not the point here: a bad flag must stop it first
        argv.append("--max-inputs=-1")
    rc, err = _call(main, argv)
    bad_flag = any(v in argv for v in ("0", "-5", "x", "nosuch", "", "io_bogus", "Nope", "--max-inputs=-1"))
    if rc == 0:
        assert "--dry-run" in argv and not bad_flag, f"accepted {argv}"
    else:
        _refused(rc, err, argv)


@settings(derandomize=True, deadline=None, max_examples=15, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(board=st.one_of(st.sampled_from(["all", "pynq", "zcu102", "nosuch", "", "../../etc/passwd.yaml"]), TEXT))
def test_fuzz_estimate_board(board, bundle_dir):
    from qsp.boards import known_boards
    from qsp.estimate.cli import main

    argv = [str(bundle_dir), f"--board={board}"]
    rc, err = _call(main, argv)
    if rc == 0:
        assert board == "all" or board.strip().lower() in known_boards() or board.strip().lower() == "pynq", board
    else:
        _refused(rc, err, argv)
