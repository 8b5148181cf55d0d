# Builds every Warden binary (the services and wardenctl); docker-compose.yml picks one per
# container with `command`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -name 'warden*' -perm -u+x -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 warden && mkdir -p /var/lib/warden /etc/warden/keys \
    && chown warden /var/lib/warden /etc/warden/keys
COPY --from=build /out/ /usr/local/bin/
COPY examples/policies /etc/warden/policies
COPY examples/approvals.yaml /etc/warden/approvals.yaml
COPY examples/alerting /etc/warden/alerting
USER warden
WORKDIR /var/lib/warden
