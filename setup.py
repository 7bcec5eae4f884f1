"""Build hook beside pyproject.toml (which holds all metadata and the package list).

The repository keeps the board files, the HLS headers and the board-side driver at the top
level (``boards/``, ``hls/``, ``deploy/``). A built wheel carries copies of them as package
data under ``qsp/_data/``; an editable install carries nothing extra (its code runs from
``toolchain/``, the data from the checkout). :mod:`qsp.resources` finds the data in an
installed package first, then in the source checkout.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

ROOT = Path(__file__).resolve().parent
#: repository folder -> (folder under qsp/_data, file patterns copied)
DATA = {
    "boards": ("boards", ("*.yaml", "power/*.yaml")),
    "hls": ("hls", ("*.h",)),
    "deploy": ("deploy", ("README.md", "pynq/*.py")),
}


class build_py(_build_py):
    """``build_py`` that also copies ``DATA`` into ``<build_lib>/qsp/_data/`` (not in
    editable mode: there the checkout itself is the data)."""

    def _data_files(self):
        for src, (dst, patterns) in DATA.items():
            for pat in patterns:
                for f in sorted((ROOT / src).glob(pat)):
                    if f.is_file():
                        yield f, Path(self.build_lib) / "qsp" / "_data" / dst / f.relative_to(ROOT / src)

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for f, target in self._data_files():
            self.mkpath(str(target.parent))
            self.copy_file(str(f), str(target))

    def get_outputs(self, include_bytecode=True):
        out = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return out
        return out + [str(t) for _, t in self._data_files()]


setup(cmdclass={"build_py": build_py})
