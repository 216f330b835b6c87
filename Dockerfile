# The component image: every pipeline step runs in it (deepfm pipeline compile --image IMG).
# Two stages: `build` installs the project and its pinned dependencies into a virtual
# environment; the final stage copies that environment and the project's files, and runs as
# a non-root user. Nothing is installed at run time.
#
# The versions are the tested ones: `pip install -c constraints.txt`, the same file `make
# test` installs with. constraints.txt pins torch==2.13.0; on PyPI that is the CUDA build for
# Linux x86_64 (the CPU wheel of our build machines comes from a local index), so the image
# trains on a GPU node with the torch the tests ran.
#
# The base image is pinned by digest, given at build time (a digest that is not given fails
# the build rather than floating):
#   DIGEST=$(docker buildx imagetools inspect python:3.11-slim-bookworm \
#            --format '{{json .Manifest.Digest}}' | tr -d '"')
#   docker build --build-arg BASE_DIGEST=$DIGEST -t REGISTRY/deepfm:TAG . && docker push ...
#   deepfm pipeline compile --image REGISTRY/deepfm:TAG --gpus 1 -o deepfm_pipeline.yaml
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG BASE_DIGEST

FROM ${BASE_IMAGE}@${BASE_DIGEST} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY common/ common/
COPY model/ model/
COPY feature_repo/ feature_repo/
COPY registry/ registry/
COPY validation/ validation/
COPY evaluation/ evaluation/
COPY training/ training/
COPY serving/ serving/
COPY components/ components/
COPY pipelines/ pipelines/
RUN pip install -c constraints.txt . \
    && python -c "import torch, kfp, feast, great_expectations; print(torch.__version__)"

FROM ${BASE_IMAGE}@${BASE_DIGEST}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GX_ANALYTICS_ENABLED=false \
    OMP_WAIT_POLICY=PASSIVE \
    NUMBA_CACHE_DIR=/app/.numba-cache \
    PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 1000 deepfm
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The Feast repo (definitions imported by `feast apply`/`feast serve` from /app/feature_repo)
# and the configs the pipeline names by relative path; the data are never in the image.
COPY feature_repo/ feature_repo/
COPY configs/ configs/
RUN mkdir -p /app/.numba-cache && chown -R deepfm /app
USER 1000
# Compile the CPU embedding kernels (model/kernels.py) into numba's cache once, here, rather
# than for a few seconds in every training pod; a kernel that fails to build fails the image.
RUN python -c "from model import kernels; assert kernels.available()"
ENTRYPOINT []
CMD ["deepfm", "--help"]
