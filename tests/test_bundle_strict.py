"""Issue 17, items 1, 2 and 6: the strict bundle loader, the trained model's outputs in the
bundle, atomic bundle replacement. Each example of the issue is a named regression test;
each guard is shown to fail on the smallest fault (one LSB, one flipped bit)."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from qsp.bundle import Bundle, BundleWarning
from qsp.bundle.io import array_digest
from qsp.compile.hls4ml_project import CompileOptions
from qsp.compile.pipeline import compile_bundle
from qsp.errors import BundleError, VerificationError
from qsp.verify.emulate import emulate, trained_model_diff

from .bundle_edits import (build_square, copy_bundle, deadline, edit_json, edit_npz, load_npz, node, replace_with_kind,
                           rewrite)


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """A written bundle of a trained MLP with a square 16 x 16 layer (dense2)."""
    return build_square().write(tmp_path_factory.mktemp("square") / "bundle")


@pytest.fixture
def bundle(square, tmp_path):
    return copy_bundle(square, tmp_path / "bundle")


def _refused(path, *words):
    with deadline(10), pytest.raises(BundleError) as e:
        Bundle.read(path)
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    return msg


def test_fixture_loads_and_is_the_trained_model(bundle):
    b = Bundle.read(bundle)
    assert b.qspec.schema_version == 3 and set(b.qspec.checksums) == {
        "weights.npz", "masks.npz", "state_dict.npz", "test_data.npz"}
    # the emulator (integers) and PyTorch (the trained model, float64) agree bit for bit
    assert b.model_out.dtype == np.float64 and b.model_out.shape == (24, 10)
    assert np.array_equal(emulate(b, b.test_x), b.model_out)
    assert trained_model_diff(b) == (240, 0, 0.0)


def test_trained_model_check_catches_one_lsb(bundle):
    """The trained-model comparison is exact: one output one LSB (2^-20) off is one mismatch."""
    b = Bundle.read(bundle)
    b.model_out = b.model_out.copy()
    b.model_out[3, 7] += 2.0 ** -20
    assert trained_model_diff(b)[:2] == (240, 1)


# ----------------------------------------------------------------------------- JSON types
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_signed_string_false_refused(bundle, value):
    """Issue: "signed": "false" (a string) was read as True (bool("false"))."""
    edit_json(bundle, lambda d: node(d, "quantize", 1)["format"].__setitem__("signed", value))
    _refused(bundle, "'signed'", "JSON bool", "quant")


@pytest.mark.parametrize("value", [7.9, "8", 8.0, True])
def test_bits_float_or_string_refused(bundle, value):
    """Issue: "bits": 7.9 or "8" was truncated / converted to 8 (int(d["bits"]))."""
    edit_json(bundle, lambda d: node(d, "linear")["weight"].__setitem__("bits", value))
    _refused(bundle, "'bits'", "JSON integer", "dense1")


@pytest.mark.parametrize("bits", [0, 65, 99, -3, 33])
def test_weight_bits_out_of_range_refused(bundle, bits):
    """Issue: weight bits 0/65/99 ended in a ValueError traceback."""
    edit_json(bundle, lambda d: node(d, "linear")["weight"].__setitem__("bits", bits))
    _refused(bundle, "'bits'", "out of range", "dense1")


def test_per_channel_fraction_list_of_wrong_length_refused(bundle):
    """Issue: a per-channel fraction list of the wrong length ended in an IndexError."""
    def fn(d):
        w = node(d, "linear", 1)["weight"]
        w["frac"] = [w["frac"]] * 3  # dense2 has 16 output channels
    edit_json(bundle, fn)
    _refused(bundle, "dense2", "3 per-channel fraction bits for 16 output channels")


@pytest.mark.parametrize("key,op", [("format", "quantize"), ("weight", "linear")])
def test_format_null_refused(bundle, key, op):
    """Issue: "format": null ended in an AttributeError."""
    edit_json(bundle, lambda d: node(d, op).__setitem__(key, None))
    _refused(bundle, repr(key), "format object")


@pytest.mark.parametrize("value", [None, {}, "dense1", [], [None], [1]])
def test_graph_null_or_malformed_refused(bundle, value):
    edit_json(bundle, lambda d: d.__setitem__("graph", value))
    _refused(bundle, "qspec.json")


@pytest.mark.parametrize("name", ["a.b", 'd"x', "dense 1", "1dense", "int", "class", "lambda", "a__b", "", "é", "x" * 70])
def test_unsafe_node_names_refused(bundle, name):
    """Issue: a node named a.b (traceback) or d"x (hls4ml renames it to d_x and qsp's
    precision settings for it are lost)."""
    def fn(d):
        old = d["graph"][2]["name"]
        for n in d["graph"]:
            n["name"] = name if n["name"] == old else n["name"]
            n["inputs"] = [name if i == old else i for i in n["inputs"]]
    edit_json(bundle, fn)
    _refused(bundle, "not a safe identifier")


def test_binary_deep_nan_duplicate_json_refused(bundle):
    f = bundle / "qspec.json"
    good = f.read_text()
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    _refused(bundle, "not UTF-8")
    f.write_text("[" * 100000 + "]" * 100000)
    _refused(bundle, "qspec.json", "nested")
    f.write_text(good.replace('"weight_sparsity": 0', '"weight_sparsity": NaN', 1).replace(
        '"weight_sparsity": 0.', '"weight_sparsity": NaN', 1))
    _refused(bundle, "NaN")
    f.write_text('{"schema_version": 3, "schema_version": 3}')
    _refused(bundle, "appears twice")
    f.write_text(good)
    assert Bundle.read(bundle)


def test_unknown_and_missing_keys_refused(bundle):
    edit_json(bundle, lambda d: node(d, "linear").__setitem__("dilation", [1, 1]))
    _refused(bundle, "unknown key", "dilation")
    edit_json(bundle, lambda d: [node(d, "linear").pop(k) for k in ("dilation", "nonzeros")] and None)
    _refused(bundle, "missing key 'nonzeros'")


def test_shape_the_op_does_not_imply_refused(bundle):
    edit_json(bundle, lambda d: node(d, "linear").__setitem__("out_features", 17))
    _refused(bundle, "dense1", "out_features 17")


# ----------------------------------------------------------------------------- arrays
def test_deleted_bias_refused(bundle):
    """Issue: dense1.bias deleted from weights.npz was accepted (and verified)."""
    edit_npz(bundle, "weights.npz", lambda a: a.pop("dense1.bias"))
    _refused(bundle, "weights.npz", "missing array 'dense1.bias'", "node 'dense1'")


def test_deleted_bias_with_fresh_checksums_refused(bundle):
    rewrite(bundle, lambda b: b.weights.pop("dense1.bias"))
    _refused(bundle, "weights.npz", "missing array 'dense1.bias'", "node 'dense1'")


def test_extra_array_refused(bundle):
    rewrite(bundle, lambda b: b.weights.__setitem__("dense9.weight", np.zeros((2, 2))))
    _refused(bundle, "weights.npz", "'dense9.weight' belongs to no node")


def test_one_lsb_in_one_weight_fails_the_checksum(bundle):
    """The smallest edit of an array (one LSB of one weight, still on its grid) is caught."""
    spec = json.loads((bundle / "qspec.json").read_text())
    frac = node(spec, "linear")["weight"]["frac"]

    def fn(a):
        w = a["dense1.weight"]
        i = np.flatnonzero(w)[0]
        w.flat[i] += 2.0 ** -frac
    edit_npz(bundle, "weights.npz", fn)
    _refused(bundle, "weights.npz", "'dense1.weight'", "checksum")


def test_nan_in_test_data_refused(bundle):
    """Issue: one NaN pixel in test_data ended in a traceback."""
    def fn(b):
        b.test_x = b.test_x.copy()
        b.test_x[0, 0, 3, 3] = np.nan
    rewrite(bundle, fn)
    _refused(bundle, "test_data.npz", "'x'", "NaN")


@pytest.mark.parametrize("what", ["dtype", "shape", "inf", "off_grid", "mask", "nonzeros", "label"])
def test_array_faults_with_fresh_checksums_refused(bundle, what):
    def fn(b):
        w = b.weights["dense2.weight"]
        if what == "dtype":
            b.weights["dense2.weight"] = w.astype(np.float32)
        elif what == "shape":
            b.weights["dense2.weight"] = w[:, :8]
        elif what == "inf":
            b.weights["dense2.weight"] = np.where(w == w.max(), np.inf, w)
        elif what == "off_grid":
            frac = b.qspec.node("dense2").weight.frac
            w = w.copy()
            w.flat[0] += 2.0 ** -(frac + 1)
            b.weights["dense2.weight"] = w
        elif what == "mask":
            k = next(iter(b.masks))
            m = b.masks[k].copy()
            m.flat[0] = 0.5
            b.masks[k] = m
        elif what == "nonzeros":
            frac = b.qspec.node("dense2").weight.frac
            w = w.copy()
            w.flat[np.flatnonzero(w == 0)[0]] = 2.0 ** -frac
            b.weights["dense2.weight"] = w
        elif what == "label":
            b.test_y = np.asarray(b.test_y).copy()
            b.test_y[0] = 10
    rewrite(bundle, fn)
    _refused(bundle)


def test_truncated_npz_refused(bundle):
    """Issue: a truncated .npz ended in a traceback."""
    replace_with_kind(bundle, "weights.npz", "truncated")
    _refused(bundle, "weights.npz", "cannot read")


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink_out", "dangling", "missing"])
def test_qspec_file_kinds_refused(bundle, tmp_path, kind):
    """Issue: a FIFO named qspec.json hung compile, estimate and deploy; a directory named
    qspec.json ended in a traceback."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    replace_with_kind(bundle, "qspec.json", kind, outside)
    _refused(bundle, "qspec.json")


def test_fifo_npz_refused_without_hanging(bundle):
    replace_with_kind(bundle, "test_data.npz", "fifo")
    _refused(bundle, "test_data.npz", "FIFO")


def test_symlink_inside_the_bundle_is_fine(bundle):
    (bundle / "spec-copy.json").write_bytes((bundle / "qspec.json").read_bytes())
    (bundle / "qspec.json").unlink()
    (bundle / "qspec.json").symlink_to("spec-copy.json")
    assert Bundle.read(bundle).qspec.graph


# ----------------------------------------------------------------------------- trained model
def _compile_refused(path, tmp_path):
    with pytest.raises(VerificationError) as e:
        compile_bundle(path, tmp_path / "hls", CompileOptions(testbench=False))
    assert "not the trained model" in str(e.value)
    v = json.loads((tmp_path / "hls" / "verify.json").read_text())
    assert v["summary"]["ok"] is False and v["paths"][0]["path"] == "trained_model"
    assert not (tmp_path / "hls" / "hls4ml_prj").exists()  # refused before hls4ml ran
    return v


def test_transposed_square_weight_fails_verification(bundle, tmp_path):
    """Issue: dense2.weight transposed (a square matrix) was "verified bit-exact" at 10 %
    accuracy: the loader cannot tell (right shape, grid, checksums refreshed), the trained
    model's outputs can."""
    rewrite(bundle, lambda b: b.weights.__setitem__("dense2.weight", b.weights["dense2.weight"].T.copy()))
    b = Bundle.read(bundle)  # structurally valid
    assert not np.array_equal(emulate(b, b.test_x), b.model_out)
    _compile_refused(bundle, tmp_path)


def test_bias_replaced_by_zeros_fails_verification(bundle, tmp_path):
    rewrite(bundle, lambda b: b.weights.__setitem__("dense1.bias", np.zeros_like(b.weights["dense1.bias"])))
    Bundle.read(bundle)
    _compile_refused(bundle, tmp_path)


def test_activation_signedness_flip_fails_verification(bundle, tmp_path):
    """A real bool flipped in a format (valid JSON, a different design) is caught by the trained-model check."""
    edit_json(bundle, lambda d: node(d, "quantize", 1)["format"].__setitem__(
        "signed", not node(d, "quantize", 1)["format"]["signed"]))
    Bundle.read(bundle)
    _compile_refused(bundle, tmp_path)


def test_old_schema_loads_with_a_warning(bundle):
    """Schema 2 (no checksums, no trained outputs) loads with a BundleWarning; compile then
    says the trained-model check cannot run."""
    def fn(d):
        d["schema_version"] = 2
        d.pop("checksums")
    edit_json(bundle, fn)
    edit_npz(bundle, "test_data.npz", lambda a: a.pop("model_out"))
    with pytest.warns(BundleWarning, match="no array checksums"):
        b = Bundle.read(bundle)
    assert b.model_out is None and trained_model_diff(b) is None


# ----------------------------------------------------------------------------- atomic write
def _write_killed_at(src, dst, step: int) -> int:
    """Rewrite bundle ``dst`` from ``src`` in a child process killed (SIGKILL, no cleanup) at
    ``step``: 0 while writing the temporary directory, 1 after moving the old bundle away,
    2 after moving the new one in (before the old one is removed)."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            import numpy as _np

            import qsp.bundle.io as bio

            b = Bundle.read(src)
            b.weights = dict(b.weights)
            real_replace, real_savez, calls = bio.os.replace, bio.np.savez, []

            def replace(a, c):
                real_replace(a, c)
                calls.append(1)
                if len(calls) == step:
                    os.kill(os.getpid(), 9)

            def savez(f, **kw):
                real_savez(f, **kw)
                if step == 0 and str(f).endswith("masks.npz"):
                    os.kill(os.getpid(), 9)
            bio.os.replace, bio.np.savez = replace, savez
            _ = _np
            b.write(dst)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("step", [0, 1, 2])
def test_write_killed_leaves_a_readable_bundle(square, tmp_path, step):
    """Issue: Bundle.write killed between its two os.replace calls left only bundle.old,
    which Bundle.read could not open, and temporary files behind."""
    dst = copy_bundle(square, tmp_path / "bundle")
    before = load_npz(dst, "weights.npz")
    status = _write_killed_at(square, dst, step)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BundleWarning)
        b = Bundle.read(dst)  # the previous bundle (steps 0, 1) or the new one (step 2)
    assert set(b.weights) == set(before)
    assert all(array_digest(b.weights[k]) == array_digest(before[k]) for k in before)
    assert not (tmp_path / "bundle.old").exists()
    b.write(dst)  # the next write cleans what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert Bundle.read(dst).qspec.checksums == b.qspec.checksums


def test_write_refuses_a_file_in_the_way(square, tmp_path):
    (tmp_path / "bundle").write_text("not a bundle")
    with pytest.raises(BundleError, match="not a bundle directory"):
        Bundle.read(square).write(tmp_path / "bundle")
