# qsp: the whole flow in one image. `docker build -t qsp . && docker run --rm qsp`
# trains the embedded default (digits), compiles it for pynq-z2 with hls4ml, runs the
# C-simulation (g++ over the ap_fixed headers) and verifies it bit-exact against PyTorch's
# integer emulation and onnxruntime, then writes the estimate and report.
# The default command is scripts/flow_check.sh, the very script .ci/run runs natively.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/qsp
# CPU build of torch first, from PyTorch's CPU index, so no requirement pulls a CUDA build
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY toolchain ./toolchain
COPY hls ./hls
COPY boards ./boards
COPY deploy ./deploy
COPY scripts ./scripts
RUN pip install -e . && python -c "import qsp, hls4ml, onnxruntime"

WORKDIR /work
CMD ["/opt/qsp/scripts/flow_check.sh", "/work/run"]
