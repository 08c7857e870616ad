# Simpsonize: one image for the web process and the workers.
#
#   CPU (default):  docker build -t simpsonize:cpu .
#   CUDA:           docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t simpsonize:cuda .
#                   (PyPI's Linux torch wheels bundle CUDA; the host needs the NVIDIA driver + container toolkit)
#
#   Everything in one container (embedded Redis + workers + web):
#       docker run -p 127.0.0.1:8000:8000 --stop-timeout 150 \
#           -v "$PWD/simpsonize/weights:/srv/simpsonize/models:ro" -e SIMPSONIZE_WEIGHTS=/srv/simpsonize/models/simpsonize.safetensors simpsonize:cpu
#   (the image holds the shipped weights already: the mount only swaps in another model)
#   (--stop-timeout: workers finish the photo in hand on SIGTERM; a reverse proxy goes in front, see README)
#   Scaled out (Redis + web + N workers): see docker-compose.yml.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SIMPSONIZE_DATA_DIR=/var/lib/simpsonize

WORKDIR /srv/simpsonize

# Exact torch pins first (from the CPU or CUDA index), so nothing later can pull another torch; facenet-pytorch
# without its (too old) pins, as the Makefile does.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        torch==2.14.1 torchvision==0.29.1 \
 && pip install --no-deps facenet-pytorch==2.6.0

# Dependencies in their own layer: only pyproject.toml changes invalidate it.
COPY pyproject.toml README.md* ./
RUN mkdir -p simpsonize \
 && touch README.md simpsonize/__init__.py \
 && pip install -e . \
 && rm -rf simpsonize *.egg-info

COPY . .
RUN pip install --no-deps -e . \
 && useradd --system --create-home --uid 10001 simpsonize \
 && mkdir -p "${SIMPSONIZE_DATA_DIR}" \
 && chown simpsonize "${SIMPSONIZE_DATA_DIR}" \
 && chmod 700 "${SIMPSONIZE_DATA_DIR}"
USER simpsonize

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
# With REDIS_URL set this is the web process only; without it, the whole embedded service.
CMD ["simpsonize", "serve", "--host", "0.0.0.0", "--port", "8000"]
