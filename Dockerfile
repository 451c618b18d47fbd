# The OpenAI-compatible server (engine-server, CPU build) in an image.
#   docker build -t engine-server .
#   docker run -p 8000:8000 -v /srv/models:/models:ro engine-server \
#       --model /models/Llama-3.2-1B-Instruct --served-model-name llama
# Without --model it serves the bundled random-weight fixture (gibberish text,
# real mechanics): enough for a smoke test of a deployment. A CUDA image builds
# with `--features cuda` on an nvidia/cuda devel base instead (see README).
# deploy/kubernetes.yaml runs replicas of it; scripts/check-deploy.sh lints both.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# One binary: the engine is linked into it (no libengine.so to ship).
RUN cargo build --release --locked -p engine-server \
    && install -D target/release/engine-server /out/engine-server

FROM debian:bookworm-slim
COPY --from=build /out/engine-server /usr/local/bin/engine-server
COPY tests/fixtures/tiny-llama /opt/engine/tiny-llama
# The default model when no --model is given (the demo model is not downloaded here).
ENV ENGINE_DEMO_MODEL=/opt/engine/tiny-llama
RUN useradd --system --uid 10001 --no-create-home engine
USER 10001
EXPOSE 8000
# Health is GET /health (200 once the model is loaded): probes of the orchestrator ask it.
ENTRYPOINT ["/usr/local/bin/engine-server", "--host", "0.0.0.0", "--port", "8000"]
