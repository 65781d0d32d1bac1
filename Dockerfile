# harpy in a container: docs/deployment.md#a-container-image.
#   docker build -t harpy-chat:0.1.0 .
#   docker run --rm -p 8000:8000 harpy-chat:0.1.0        # then open http://127.0.0.1:8000/
# It serves examples/rooms_chat.py; for your app, copy your code where examples/ is copied and
# set HARPY_APP (every option of python -m harpy is a HARPY_* variable: docs/running.md).

# --- build: the wheel, with its compiled core ---
FROM python:3.13-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE CHANGELOG.md ./
COPY src/ ./src/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- run: the wheel and the app, no compiler ---
FROM python:3.13-slim
RUN useradd --system --uid 10001 --home-dir /app harpy
COPY --from=build /wheels/ /wheels/
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY examples/ ./examples/
USER harpy
ENV PYTHONUNBUFFERED=1 \
    HARPY_APP=examples.rooms_chat:app \
    HARPY_HOST=0.0.0.0 \
    HARPY_PORT=8000 \
    HARPY_LOG_FORMAT=json
EXPOSE 8000
# SIGTERM starts the graceful stop (with HARPY_DRAIN, the drain first): docker stop's default
# 10 s must cover drain + shutdown_timeout (docker stop -t, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "harpy"]
