"""Read, validate and write bundles (see :mod:`qsp.bundle.schema` and docs/bundle.md).

Reading is strict: every file must be a regular file inside the bundle (checked with
``os.lstat`` before it is opened: a FIFO, a device, a directory or a symbolic link out of
the bundle is refused, never read); qspec.json is parsed with exact JSON types; every array
the graph implies must be present with its shape and dtype, finite and on its grid, and no
other; and every array's sha256, recorded in qspec.json when the bundle was written, must
match. Every failure is a :class:`~qsp.errors.BundleError` naming the file, node and key.

Writing is atomic: the bundle is written into a temporary sibling ``.<name>.tmp-XXXX`` and
moved into place by rename. Replacing an existing bundle takes two renames (old out, new
in); a process killed between them leaves ``<name>.old`` and no ``<name>``: the next read or
write puts ``<name>.old`` back (the previous bundle), and the next write removes leftover
temporary directories.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BundleError
from .schema import (GRAPH_INPUT, SCHEMA_VERSION, Conv2dNode, LeakyReluNode, LinearNode, MaskNode, QSpec, ScaleShiftNode, check_graph,
                     input_shapes_ok, parse_json, sequential_inputs)

QSPEC = "qspec.json"
WEIGHTS = "weights.npz"
MASKS = "masks.npz"
STATE = "state_dict.npz"
TEST_DATA = "test_data.npz"
ONNX = "model.onnx"
REQUIRED = (QSPEC, WEIGHTS, STATE, TEST_DATA)
#: the array files, in the order their checksums are listed
ARRAY_FILES = (WEIGHTS, MASKS, STATE, TEST_DATA)
#: keys of test_data.npz: inputs, targets, the trained model's outputs on the inputs
TEST_KEYS = ("x", "y", "model_out")


class BundleWarning(UserWarning):
    """A bundle that loads but lacks a guard (an old schema without checksums or trained-model
    outputs), or one recovered from an interrupted write."""


def array_digest(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (C order): recorded at write, checked at read."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def expected_arrays(graph) -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
    """file -> array key -> (shape, node name): the arrays the graph implies."""
    w, m = {}, {}
    for n in graph:
        if isinstance(n, (LinearNode, Conv2dNode)):
            o, i = n.out_shape[0], n.in_shape[0]
            shape = (o, i) if isinstance(n, LinearNode) else (o, i // n.groups, *n.kernel_size)
            w[f"{n.name}.weight"] = (tuple(shape), n.name)
            if n.bias is not None:
                w[f"{n.name}.bias"] = ((o,), n.name)
        elif isinstance(n, ScaleShiftNode):
            w[f"{n.name}.weight"] = ((n.channels,), n.name)
            w[f"{n.name}.bias"] = ((n.channels,), n.name)
        elif isinstance(n, MaskNode):
            m[f"{n.name}.mask"] = (tuple(n.in_shape), n.name)
    return {WEIGHTS: w, MASKS: m}


def _node_of(key: str, graph) -> str:
    name = key.rsplit(".", 1)[0]
    return f" (node {name!r})" if any(n.name == name for n in graph) else ""


def _check_set(fname: str, have, want, graph) -> None:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise BundleError(f"{fname}: missing array {missing[0]!r}{_node_of(missing[0], graph)}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise BundleError(f"{fname}: array {extra[0]!r}{_node_of(extra[0], graph)} belongs to no node of the graph"
                          + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))


def _check_array(fname: str, key: str, a, shape, dtypes, node: str = "") -> None:
    where = f"{fname}: array {key!r}" + (f" (node {node!r})" if node else "")
    if not isinstance(a, np.ndarray):
        raise BundleError(f"{where} is not an array")
    if dtypes is not None and a.dtype not in dtypes:
        raise BundleError(f"{where} has dtype {a.dtype}, expected {' or '.join(str(np.dtype(d)) for d in dtypes)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise BundleError(f"{where} has shape {list(a.shape)}, expected {list(shape)}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise BundleError(f"{where} holds {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite value(s)")


@dataclass
class Bundle:
    """A bundle in memory: the spec plus its arrays. ``model_out`` is the trained PyTorch
    model's output on ``test_x`` (exported with it; None for a bundle built by hand)."""

    qspec: QSpec
    weights: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    state_dict: dict[str, np.ndarray] = field(default_factory=dict)
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    path: Path | None = None
    model_out: np.ndarray | None = None

    # ------------------------------------------------------------------ accessors
    def weight(self, node_name: str) -> np.ndarray:
        return self.weights[f"{node_name}.weight"]

    def bias(self, node_name: str) -> np.ndarray | None:
        return self.weights.get(f"{node_name}.bias")

    def mask(self, node_name: str) -> np.ndarray:
        return self.masks[f"{node_name}.mask"]

    @property
    def graph(self):
        return self.qspec.graph

    # ------------------------------------------------------------------ checks
    def validate(self) -> "Bundle":
        """The graph's nodes consistent and chained; exactly the arrays the graph implies,
        each of its shape and dtype, finite; weights and biases on their grids, pruned weights
        exactly zero (``nonzeros``), masks 0/1; the test data of the task's shapes."""
        graph = self.qspec.graph
        sequential_inputs(graph)
        check_graph(graph)
        task = self.qspec.task
        if list(task.input_shape) != list(graph[0].in_shape) or list(task.output_shape) != list(graph[-1].out_shape):
            raise BundleError(f"qspec.json: task input_shape {task.input_shape} / output_shape {task.output_shape} "
                              f"differ from the graph's {graph[0].in_shape} / {graph[-1].out_shape}")
        out_shape = {GRAPH_INPUT: list(graph[0].in_shape)}
        for n in graph:
            wrong = input_shapes_ok(n, [out_shape[x] for x in n.inputs])
            if wrong:
                raise BundleError(f"qspec.json: node {n.name!r} ({n.op}) {wrong}")
            out_shape[n.name] = list(n.out_shape)
        want = expected_arrays(graph)
        for fname, arrays in ((WEIGHTS, self.weights), (MASKS, self.masks)):
            _check_set(fname, arrays, want[fname], graph)
            for key, (shape, node) in want[fname].items():
                _check_array(fname, key, arrays[key], shape,
                             (np.float64,) if fname == WEIGHTS else (np.float32, np.float64), node)
        for n in graph:
            self._check_values(n)
        for key, a in self.state_dict.items():
            _check_array(STATE, key, a, None, None)
            if a.dtype.kind not in "fiub":
                raise BundleError(f"{STATE}: array {key!r} has dtype {a.dtype}: a state_dict holds numbers")
        self._check_test_data()
        return self

    def _check_values(self, n) -> None:
        if isinstance(n, (LinearNode, Conv2dNode)):
            key = f"{n.name}.weight"
            w = self.weights[key]
            fmts = n.weight.formats()
            for c, f in enumerate(fmts):
                wc = w if len(fmts) == 1 else w[c]
                if not f.contains(wc):
                    raise BundleError(f"{WEIGHTS}: array {key!r} (node {n.name!r}) is not on its {f.bits}-bit grid "
                                      f"2^-{f.frac}" + ("" if len(fmts) == 1 else f" (channel {c})"))
            b = self.weights.get(f"{n.name}.bias")
            if b is not None and not n.bias.contains(b):
                raise BundleError(f"{WEIGHTS}: array '{n.name}.bias' (node {n.name!r}) is not on its grid {n.bias}")
            nz = int(np.count_nonzero(w))
            if nz != n.nonzeros:
                raise BundleError(f"qspec.json: node {n.name!r} key 'nonzeros' says {n.nonzeros}, "
                                  f"{WEIGHTS} '{key}' has {nz}")
        elif isinstance(n, LeakyReluNode):
            if not n.param.contains(np.array([n.slope])) or not 0 <= n.slope < 1:
                raise BundleError(f"qspec.json: node {n.name!r} (leaky_relu): key 'slope' {n.slope!r} must lie in "
                                  f"[0, 1) on the grid of its param format {n.param}")
        elif isinstance(n, ScaleShiftNode):
            for key, f in ((f"{n.name}.weight", n.weight), (f"{n.name}.bias", n.bias)):
                if not f.contains(self.weights[key]):
                    raise BundleError(f"{WEIGHTS}: array {key!r} (node {n.name!r}) is not on the grid of {f}")
        elif isinstance(n, MaskNode):
            if not np.isin(self.mask(n.name), (0, 1)).all():
                raise BundleError(f"{MASKS}: array '{n.name}.mask' (node {n.name!r}) holds values other than 0 and 1")

    def _check_test_data(self) -> None:
        x, y, out, task = self.test_x, self.test_y, self.model_out, self.qspec.task
        if x is None:
            if y is not None or out is not None:
                raise BundleError(f"{TEST_DATA}: has 'y' or 'model_out' but no inputs 'x'")
            return
        _check_array(TEST_DATA, "x", x, None, (np.float32,))
        if x.ndim < 1 or list(x.shape[1:]) != list(task.input_shape):
            raise BundleError(f"{TEST_DATA}: array 'x' has shape {list(x.shape)}, expected [N] + task input_shape "
                              f"{task.input_shape}")
        n = len(x)
        if out is not None:
            _check_array(TEST_DATA, "model_out", out, (n, *task.output_shape), (np.float64,))
        if y is not None:
            _check_array(TEST_DATA, "y", y, None, None)
            if y.dtype.kind not in "fiu" or y.ndim < 1 or len(y) != n:
                raise BundleError(f"{TEST_DATA}: array 'y' ({y.dtype}, shape {list(y.shape)}) must hold {n} numeric "
                                  "targets, one per input")
            if task.kind == "classification":
                bad = y.dtype.kind == "f" or y.ndim != 1 or (y.size and y.min() < 0) or \
                    (task.num_classes is not None and y.size and y.max() >= task.num_classes)
                if bad:
                    raise BundleError(f"{TEST_DATA}: array 'y' must hold integer class labels in "
                                      f"[0, {task.num_classes}) for a classification task")

    # ------------------------------------------------------------------ io
    @classmethod
    def read(cls, path, validate: bool = True) -> "Bundle":
        p = Path(path)
        if p.suffix == ".onnx" and p.is_file():  # a QONNX model made elsewhere (Brevitas, ...)
            from .qonnx import read_qonnx

            return read_qonnx(p, validate)
        _recover(p)
        if _isdir(p) and not os.path.lexists(p / QSPEC) and (os.path.lexists(p / "bundle")
                                                             or os.path.lexists(p / "bundle.old")):
            p = p / "bundle"  # a run directory was given
            _recover(p)
        if not _isdir(p):
            raise BundleError(f"bundle {str(path)!r} does not exist or is not a directory")
        root = p.resolve()
        files = {f: _regular(p, root, f, f in REQUIRED) for f in (QSPEC, *ARRAY_FILES)}
        d = parse_json(files[QSPEC].read_bytes(), str(p / QSPEC))
        version = d.get("schema_version") if isinstance(d, dict) else None
        qspec = QSpec.from_dict(d)
        arrays = {f: _load_npz(files[f]) if files[f] is not None else {} for f in ARRAY_FILES}
        if version == 3:
            _check_sums(p, d["checksums"], arrays, qspec.graph)
        else:
            warnings.warn(f"{p / QSPEC}: schema_version {version} has no array checksums and no trained-model "
                          "outputs; qsp-compile cannot check it against the trained model. Re-export it: "
                          "qsp-train --resume --out RUN_DIR", BundleWarning, stacklevel=2)
        td = arrays[TEST_DATA]
        unknown = sorted(set(td) - set(TEST_KEYS))
        if unknown:
            raise BundleError(f"{p / TEST_DATA}: unknown array(s) {unknown}; known: {list(TEST_KEYS)}")
        b = cls(qspec, arrays[WEIGHTS], arrays[MASKS], arrays[STATE], td.get("x"), td.get("y"), p,
                td.get("model_out"))
        return b.validate() if validate else b

    def write(self, path) -> Path:
        """Write atomically (see the module doc) and record every array's checksum."""
        path = Path(path)
        if os.path.lexists(path) and not _isdir(path):
            raise BundleError(f"{path} exists and is not a bundle directory; remove it or write elsewhere")
        path.parent.mkdir(parents=True, exist_ok=True)
        _recover(path)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed write
            shutil.rmtree(stale, ignore_errors=True)
        td = {k: v for k, v in (("x", self.test_x), ("y", self.test_y), ("model_out", self.model_out))
              if v is not None}
        arrays = {WEIGHTS: self.weights, MASKS: self.masks, STATE: self.state_dict, TEST_DATA: td}
        self.qspec.checksums = {f: {k: array_digest(np.asarray(v)) for k, v in arrays[f].items()} for f in ARRAY_FILES}
        self.qspec.schema_version = SCHEMA_VERSION
        import json

        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is an ordinary directory
        try:
            (tmp / QSPEC).write_text(json.dumps(self.qspec.to_dict(), indent=1, allow_nan=False))
            for f in ARRAY_FILES:
                np.savez(tmp / f, **arrays[f])
            for src in (self.path, path):  # side files (model.onnx, metrics.json, ...) are kept
                if src is not None and _isdir(Path(src)):
                    for extra in Path(src).iterdir():
                        if stat.S_ISREG(os.lstat(extra).st_mode) and not (tmp / extra.name).exists():
                            shutil.copy2(extra, tmp / extra.name)
            for f in tmp.iterdir():
                _fsync(f)
            if os.path.lexists(path):
                old = path.with_name(path.name + ".old")
                os.replace(path, old)
                os.replace(tmp, path)  # a kill between these two: the next read/write restores old
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
            _fsync(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = path
        return path

    def digest(self) -> str:
        """sha256 of the bundle's content (qspec less its bookkeeping, every array), not of
        its files: the same bundle read from any place, or rewritten, has the same digest.
        qsp-compile records it in the projects it writes; qsp.deploy checks it."""
        import hashlib
        import json

        spec = {k: v for k, v in self.qspec.to_dict().items() if k not in ("checksums", "schema_version")}
        h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
        test = {k: v for k, v in (("x", self.test_x), ("y", self.test_y), ("model_out", getattr(self, "model_out", None)))
                if v is not None}
        for part, arrays in (("weights", self.weights), ("masks", self.masks), ("state", self.state_dict),
                             ("test", test)):
            for k in sorted(arrays):
                a = np.ascontiguousarray(arrays[k])
                h.update(f"\0{part}/{k}:{a.dtype.str}:{a.shape}\0".encode())
                h.update(a.tobytes())
        return h.hexdigest()

    def write_json(self, name: str, obj) -> Path:
        """Add or replace a JSON side file (metrics.json, ...) in a written bundle."""
        import json

        if self.path is None:
            raise BundleError("bundle has not been written yet")
        f = Path(self.path) / name
        tmp = f.with_suffix(f.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, f)
        return f


def read_bundle(path, validate: bool = True) -> Bundle:
    return Bundle.read(path, validate)


# ----------------------------------------------------------------------------- files
def _isdir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(p).st_mode)
    except (OSError, ValueError):
        return False


def _recover(path: Path) -> None:
    """Finish what a killed :meth:`Bundle.write` left: ``<name>.old`` without ``<name>`` is put
    back (the previous bundle); beside a complete ``<name>`` it is removed."""
    old = path.with_name(path.name + ".old")
    try:
        old_is_dir = stat.S_ISDIR(os.lstat(old).st_mode)
    except (OSError, ValueError):
        return
    if not old_is_dir:
        return
    if not os.path.lexists(path):
        os.replace(old, path)
        warnings.warn(f"{path}: restored the previous bundle from {old.name} (a write was interrupted)",
                      BundleWarning, stacklevel=3)
    elif _isdir(path) and os.path.lexists(path / QSPEC):
        shutil.rmtree(old, ignore_errors=True)


def _regular(p: Path, root: Path, name: str, required: bool) -> Path | None:
    """``p/name`` if it is a regular file inside the bundle (a symbolic link only to one
    inside it); None when absent and not required. Never opens anything else."""
    f = p / name
    try:
        st = os.lstat(f)
    except FileNotFoundError:
        if required:
            raise BundleError(f"bundle {str(p)!r} is missing {name}") from None
        return None
    except OSError as e:
        raise BundleError(f"{f}: cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = f.resolve(strict=True)
        except (OSError, RuntimeError) as e:
            raise BundleError(f"{f}: a broken or looping symbolic link ({e})") from None
        if not target.is_relative_to(root):
            raise BundleError(f"{f}: a symbolic link to {target}, outside the bundle; bundle files must lie in it")
        st = os.stat(target)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if
                stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise BundleError(f"{f}: is {kind}, not a regular file")
    return f


def _load_npz(f: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(f, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            out = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile, numpy's format parser and the OS raise many kinds here
        raise BundleError(f"{f}: cannot read ({type(e).__name__}: {e}); the file is damaged or not an .npz") from None
    for k, a in out.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub":
            raise BundleError(f"{f}: array {k!r} is not a numeric array")
    return out


def _check_sums(p: Path, sums: dict, arrays: dict, graph) -> None:
    files = sorted(set(sums) ^ set(ARRAY_FILES))
    if files:
        raise BundleError(f"{p / QSPEC}: key 'checksums' must list exactly {list(ARRAY_FILES)} (wrong: {files})")
    for fname in ARRAY_FILES:
        _check_set(str(p / fname), arrays[fname], sums[fname], graph)
        for k, a in arrays[fname].items():
            if array_digest(a) != sums[fname][k]:
                raise BundleError(f"{p / fname}: array {k!r}{_node_of(k, graph)} does not match its checksum in "
                                  f"{QSPEC}: the file was changed after the bundle was written")


def _fsync(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
