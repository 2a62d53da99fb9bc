# raa as a container: `docker build -t raa .`, or through docker-compose.yml.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin raa

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/raa /usr/local/bin/raa
# The state directory is the StatefulSet's volume; raa runs as an unprivileged user.
RUN useradd --system --uid 10001 --home /var/lib/raa raa && mkdir -p /var/lib/raa \
    && chown raa: /var/lib/raa
USER 10001
ENV RAA_STATE_DIR=/var/lib/raa/state RAA_METRICS_ADDR=0.0.0.0:9101
EXPOSE 9101
ENTRYPOINT ["raa"]
CMD ["run"]
