"""Issue 17, item 8 (bundles): a derandomized hypothesis fuzz of the bundle loader. A small
real bundle (a trained CNN: conv, relu, mask, quantize, maxpool, flatten, linear) is written
once; every example copies it and applies one mutation: a JSON value of the wrong type, a
key removed or added, a number out of range, an unsafe node name, an array removed, added,
reshaped, retyped, made NaN/inf, moved off its grid or by one LSB (raw: checksums stale;
rewritten: checksums fresh), a file swapped for a directory, FIFO, symlink out, garbage or
a truncated copy. Every invalid bundle must raise BundleError (nothing else, never hang);
every valid edit (formatting, free-text and report fields, side files) must load."""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsp.bundle import Bundle
from qsp.errors import BundleError

from .bundle_edits import deadline, edit_npz, replace_with_kind, rewrite
from .bundles import build_bundle

def fuzz(n: int):
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ARRAY_FILES = ("weights.npz", "masks.npz", "state_dict.npz", "test_data.npz")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    path = build_bundle("cnn", steps=30, n_test=8).write(root / "bundle")
    spec = json.loads((path / "qspec.json").read_text())
    return path, spec


class Work:
    """A fresh copy of the base bundle per example."""

    def __init__(self, base):
        self.tmp = Path(tempfile.mkdtemp(prefix="qsp-fuzz-"))
        self.path = Path(shutil.copytree(base, self.tmp / "bundle"))

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.tmp, ignore_errors=True)


def _read(path):
    with deadline(10), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Bundle.read(path)


def _invalid(path):
    """Must raise BundleError naming a bundle file (nothing else, no hang)."""
    with pytest.raises(BundleError) as e:
        _read(path)
    assert any(f in str(e.value) for f in ("qspec.json", *ARRAY_FILES, "bundle")), str(e.value)


# ----------------------------------------------------------------------------- JSON
def _leaves(spec):
    """(path, value) of every typed leaf whose type is fixed by the schema (free-form report
    fields and nullable fields left out)."""
    out = []
    skip = {"source", "num_classes", "kept_outputs", "bias", "extra", "kwargs", "qsp_version", "name"}

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                if k not in skip:
                    walk(v, path + [k])
        elif isinstance(o, list) and o and all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in o):
            out.append((path, o))
        elif isinstance(o, (bool, int, float, str)):
            out.append((path, o))

    for i, n in enumerate(spec["graph"]):
        walk(n, ["graph", i])
    walk(spec["task"], ["task"])
    for k in ("schema_version", "method"):
        out.append(([k], spec[k]))
    return out


def _wrong_values(v):
    if isinstance(v, bool):
        return ["false", "true", 0, 1, None, 1.0, []]
    if isinstance(v, int):
        return [v + 0.5, str(v), float(v), True, None, [v], {}]
    if isinstance(v, float):
        return [str(v), True, None, [v], {}]
    if isinstance(v, str):
        return [1, True, None, [v], {}, 2.5]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return [None, 3, "x", [], [1] * len(v), {}]
    if isinstance(v, list):
        return [None, 3, "x", [], [str(x) for x in v], [x + 0.5 for x in v], [True] * len(v), {}]
    raise AssertionError(v)


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _del(d, path):
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]


def _write_spec(path, d):
    (path / "qspec.json").write_text(json.dumps(d))


@fuzz(80)
@given(data=st.data())
def test_fuzz_wrong_json_types(base, data):
    """One schema-typed leaf replaced by a value of another JSON type: refused."""
    path0, spec = base
    leaves = _leaves(spec)
    where, v = data.draw(st.sampled_from(leaves), label="leaf")
    bad = data.draw(st.sampled_from(_wrong_values(v)), label="value")
    with Work(path0) as p:
        d = json.loads(json.dumps(spec))
        _set(d, where, bad)
        _write_spec(p, d)
        _invalid(p)


FMT_BAD = [("bits", 0), ("bits", 33), ("bits", 65), ("bits", 99), ("bits", -1), ("frac", 129), ("frac", -200),
           ("rounding", "up"), ("rounding", ""), ("frac", [1, 2, 3]), ("frac", [])]
NAMES_BAD = ["a.b", 'd"x', "a b", "1x", "int", "for", "class", "None", "x__y", "", "über", "a-b", "x" * 64, "_x"]


@fuzz(80)
@given(data=st.data())
def test_fuzz_structure(base, data):
    """A required key removed, an unknown key added, a format out of range, an unsafe node
    name, a shape that no longer follows from the op: refused."""
    path0, spec = base
    d = json.loads(json.dumps(spec))
    kind = data.draw(st.sampled_from(["remove", "add", "format", "name", "shape", "top"]), label="kind")
    i = data.draw(st.integers(0, len(d["graph"]) - 1), label="node")
    n = d["graph"][i]
    if kind == "remove":
        key = data.draw(st.sampled_from(sorted(n)), label="key")
        del n[key]
    elif kind == "add":
        n[data.draw(st.sampled_from(["dilation", "Name", "weights", "extra", "comment"]), label="key")] = 1
    elif kind == "format":
        fmts = [k for k in ("format", "weight", "bias", "param") if isinstance(n.get(k), dict)]
        if not fmts:
            n["format"] = {"bits": 8}
        else:
            key, val = data.draw(st.sampled_from(FMT_BAD), label="fmt")
            n[data.draw(st.sampled_from(fmts), label="which")][key] = val
            if key == "frac" and isinstance(val, list) and n["op"] == "quantize":
                pass  # a list is a type error for activation formats
            elif key == "frac" and isinstance(val, list) and len(val) == n["out_shape"][0]:
                n["out_shape"] = [n["out_shape"][0] + 1] + n["out_shape"][1:]
    elif kind == "name":
        old, new = n["name"], data.draw(st.sampled_from(NAMES_BAD), label="name")
        for m in d["graph"]:
            m["name"] = new if m["name"] == old else m["name"]
            m["inputs"] = [new if x == old else x for x in m["inputs"]]
    elif kind == "shape":
        which = data.draw(st.sampled_from(["in_shape", "out_shape"]), label="which")
        s = list(n[which])
        j = data.draw(st.integers(0, len(s) - 1), label="dim")
        s[j] = data.draw(st.sampled_from([0, -1, s[j] + 1, 2 ** 21]), label="size")
        n[which] = s
    else:
        key = data.draw(st.sampled_from(["task", "model", "graph", "checksums", "schema_version", "metrics"]))
        if data.draw(st.booleans(), label="drop"):
            del d[key]
        else:
            d[key] = {"task": {}, "model": {"factory": 1}, "graph": [], "checksums": {"weights.npz": {}},
                      "schema_version": 4, "metrics": []}[key]
    with Work(path0) as p:
        _write_spec(p, d)
        _invalid(p)


# ----------------------------------------------------------------------------- arrays
def _mutate_array(a: np.ndarray, how: str, frac: int | None):
    if how == "nan":
        a = a.astype(np.float64 if a.dtype.kind != "f" else a.dtype).copy()
        a.flat[0] = np.nan
    elif how == "inf":
        a = a.astype(np.float64 if a.dtype.kind != "f" else a.dtype).copy()
        a.flat[-1] = -np.inf
    elif how == "dtype":
        a = a.astype(np.float32 if a.dtype != np.float32 else np.float64)
    elif how == "shape":
        a = a.reshape(-1)[:-1] if a.size > 1 else np.zeros((2, 2))
    elif how == "ulp":  # the smallest change a value can take
        a = a.copy()
        a.flat[0] = np.nextafter(a.flat[0], np.inf) if a.dtype.kind == "f" else a.flat[0] + 1
    return a


@fuzz(60)
@given(data=st.data())
def test_fuzz_raw_array_edits(base, data):
    """An .npz edited in place (checksums in qspec.json stale): any change is refused, the
    smallest (one LSB) included."""
    path0, _ = base
    with Work(path0) as p:
        fname = data.draw(st.sampled_from(ARRAY_FILES), label="file")
        with np.load(p / fname) as z:
            keys = sorted(z.files)
        how = data.draw(st.sampled_from(["delete", "extra", "nan", "inf", "dtype", "shape", "ulp"]), label="how")
        key = data.draw(st.sampled_from(keys), label="key") if keys else None
        if how == "extra" or key is None:
            edit_npz(p, fname, lambda a: a.__setitem__("conv9.weight", np.zeros(3)))
        elif how == "delete":
            edit_npz(p, fname, lambda a: a.pop(key))
        else:
            edit_npz(p, fname, lambda a: a.__setitem__(key, _mutate_array(a[key], how, 24)))
        _invalid(p)


@fuzz(60)
@given(data=st.data())
def test_fuzz_rewritten_array_faults(base, data):
    """Faults written back through Bundle.write (fresh checksums): only the structural checks
    stand between them and a wrong design; each must be refused."""
    path0, _ = base
    how = data.draw(st.sampled_from(["delete", "extra", "nan", "inf", "dtype", "shape", "off_grid", "mask_value",
                                     "nonzeros", "x_nan", "out_shape", "y_len"]), label="how")
    which = data.draw(st.integers(0, 99), label="which")

    def fn(b):
        layers = [n for n in b.graph if n.op in ("linear", "conv2d")]
        n = layers[which % len(layers)]
        key = f"{n.name}.{'weight' if which % 3 else 'bias'}"
        if key not in b.weights:
            key = f"{n.name}.weight"
        w = b.weights[key]
        frac = (n.weight.formats()[0].frac if key.endswith("weight") else n.bias.frac)
        if how == "delete":
            del b.weights[key]
        elif how == "extra":
            b.masks["mask9.mask"] = np.ones(3, np.float32)
        elif how in ("nan", "inf", "dtype", "shape"):
            b.weights[key] = _mutate_array(w, how, frac)
        elif how == "off_grid":
            w = w.copy()
            w.flat[which % w.size] += 2.0 ** -(frac + 1)
            b.weights[key] = w
        elif how == "mask_value":
            k = sorted(b.masks)[which % len(b.masks)]
            m = b.masks[k].copy()
            m.flat[which % m.size] = (0.5, 2.0, -1.0)[which % 3]
            b.masks[k] = m
        elif how == "nonzeros":
            w = b.weights[f"{n.name}.weight"].copy()
            zeros = np.flatnonzero(w == 0)
            nz = np.flatnonzero(w)
            if zeros.size and which % 2:
                w.flat[zeros[which % zeros.size]] = 2.0 ** -n.weight.formats()[0].frac
            else:
                w.flat[nz[which % nz.size]] = 0.0
            b.weights[f"{n.name}.weight"] = w
        elif how == "x_nan":
            x = b.test_x.copy()
            x.flat[which % x.size] = np.nan
            b.test_x = x
        elif how == "out_shape":
            b.model_out = b.model_out[:, :-1].copy()
        elif how == "y_len":
            b.test_y = np.asarray(b.test_y)[:-1]
    with Work(path0) as p:
        rewrite(p, fn)
        _invalid(p)


# ----------------------------------------------------------------------------- files
@fuzz(40)
@given(fname=st.sampled_from(("qspec.json", *ARRAY_FILES)),
       kind=st.sampled_from(["dir", "fifo", "symlink_out", "dangling", "empty", "garbage", "truncated", "missing"]))
def test_fuzz_file_kinds(base, fname, kind):
    """A bundle file replaced by another kind of file: refused, never read from a FIFO or
    through a link out of the bundle."""
    path0, _ = base
    with Work(path0) as p:
        outside = p.parent / "elsewhere"
        outside.mkdir()
        replace_with_kind(p, fname, kind, outside)
        _invalid(p)  # masks.npz too: this graph has mask nodes


# ----------------------------------------------------------------------------- valid edits
@fuzz(40)
@given(data=st.data())
def test_fuzz_valid_edits_load(base, data):
    """Edits that change nothing the hardware computes load, with the same arrays."""
    path0, spec = base
    d = json.loads(json.dumps(spec))
    kind = data.draw(st.sampled_from(["indent", "metrics", "source", "extra", "plan", "key_order", "side_file"]))
    text = data.draw(st.text(max_size=20), label="text")
    if kind == "metrics":
        d["metrics"][text or "k"] = data.draw(st.one_of(st.integers(), st.floats(allow_nan=False,
                                                                                allow_infinity=False), st.text()))
    elif kind == "source":
        d["graph"][data.draw(st.integers(0, len(d["graph"]) - 1))]["source"] = text
    elif kind == "extra":
        d["extra"]["note"] = text
    elif kind == "plan":
        d["plan"]["comment"] = [text, {"x": text}]
    elif kind == "key_order":
        d = dict(reversed(list(d.items())))
    with Work(path0) as p:
        dumps = json.dumps(d, indent=data.draw(st.sampled_from([None, 0, 1, 4]))) if kind != "side_file" \
            else (p / "qspec.json").read_text()
        (p / "qspec.json").write_text(dumps)
        if kind == "side_file":
            (p / "notes.txt").write_text(text)
        b = _read(p)
        ref = _read(path0)
        assert b.weights.keys() == ref.weights.keys()
        assert all(np.array_equal(b.weights[k], ref.weights[k]) for k in ref.weights)
