# KD Playground as a class server: the same `python -m kdengine serve` as on a plain machine, with
# the data folder (runs, checkpoints, data sets, the instructor token) on the /data volume.
# Start it with compose.yaml: docker compose up -d --build   (docs/serving.md)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 KD_RUNS_DIR=/data
# The CPU build of the pinned torch: the default index's build carries gigabytes of GPU libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# More requirements files to install, e.g. requirements-cluster.txt for Ray.
ARG EXTRAS=""

WORKDIR /app
# torch and torchvision first, in a layer of their own: the code changes far more often.
COPY requirements.txt ./
RUN grep -E '^torch(vision)?==' requirements.txt > /tmp/torch.txt \
    && pip install --extra-index-url "$TORCH_INDEX" -r /tmp/torch.txt
COPY . .
RUN pip install --extra-index-url "$TORCH_INDEX" -r requirements.txt \
    && if [ -n "$EXTRAS" ]; then pip install -r $EXTRAS; fi \
    && useradd --create-home kd && mkdir -p /data && chown kd /data
USER kd
VOLUME /data
EXPOSE 8501
# The health check reads KD_PUBLIC_URL for the path the app is served under.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "kdengine", "health", "--port", "8501"]
CMD ["python", "-m", "kdengine", "serve", "--address", "0.0.0.0", "--port", "8501"]
