# The component image: every pipeline step runs in it (deepfm pipeline compile --image IMG).
# CUDA PyTorch from the base image; the project and its pinned dependencies on top; nothing
# is installed at run time.
#   docker build -t REGISTRY/deepfm:TAG . && docker push REGISTRY/deepfm:TAG
#   deepfm pipeline compile --image REGISTRY/deepfm:TAG --gpus 1 -o deepfm_pipeline.yaml
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GX_ANALYTICS_ENABLED=false \
    NUMBA_CACHE_DIR=/app/.numba-cache

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY model/ model/
COPY feature_repo/ feature_repo/
COPY registry/ registry/
COPY validation/ validation/
COPY evaluation/ evaluation/
COPY training/ training/
COPY serving/ serving/
COPY components/ components/
COPY pipelines/ pipelines/
COPY configs/ configs/
# Keep the image's CUDA torch: drop the CPU torch pin of the laptop set-up.
RUN grep -v '^torch' constraints.txt > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt . \
    && python -c "import torch, kfp, feast, great_expectations; print(torch.__version__)"

RUN useradd --create-home --uid 1000 deepfm && mkdir -p /app/.numba-cache \
    && chown -R deepfm /app
USER deepfm
# Compile the CPU embedding kernels (model/kernels.py) into numba's cache once, here, rather
# than for a few seconds in every training pod; a kernel that fails to build fails the image.
RUN python -c "from model import kernels; assert kernels.available()"
ENTRYPOINT []
CMD ["deepfm", "--help"]
