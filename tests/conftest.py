import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.bundles import build_bundle  # noqa: E402

#: scripts/run_tests.sh (README's test command, CI) installs every system package the
#: tests use and sets this: a missing one then fails its tests instead of skipping them.
REQUIRE_SYSTEM_DEPS = os.environ.get("QSP_REQUIRE_SYSTEM_DEPS") == "1"


def needs_system(available: bool, reason: str):
    """skipif for a system package a developer may lack; never skips under run_tests.sh."""
    return pytest.mark.skipif(not available and not REQUIRE_SYSTEM_DEPS, reason=reason)


#: the C simulation needs g++ (a developer without it still runs the rest; CI never skips)
needs_gxx = needs_system(shutil.which("g++") is not None, "g++ is needed for the C simulation (apt-get install -y g++)")


@pytest.fixture(scope="session")
def mlp_bundle(tmp_path_factory):
    """A written MLP bundle (8-bit, 50 % weight and activation sparsity)."""
    return build_bundle("mlp").write(tmp_path_factory.mktemp("mlp") / "bundle")


@pytest.fixture(scope="session")
def cnn_bundle(tmp_path_factory):
    """A written CNN bundle (conv/relu/maxpool/flatten/linear with activation masks)."""
    return build_bundle("cnn").write(tmp_path_factory.mktemp("cnn") / "bundle")
