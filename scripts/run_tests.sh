#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it): installs what the tests
# need from the project's own files, runs the csim check (the same script the Dockerfile
# runs), then the test suite with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# system packages: headless Chromium for the report test, Fashion-MNIST for its loader test
pkgs="chromium chromium-driver dataset-fashion-mnist"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
      || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; }
  fi
fi

pip install torch==2.13.0
pip install -e '.[test]'

scripts/flow_check.sh runs/ci-flow-check

QSP_REQUIRE_SYSTEM_DEPS=1 python -m pytest -q "$@"
