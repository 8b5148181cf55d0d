# The OpenTelemetry collector on Alpine: the upstream image is built from
# scratch, with nothing a health check could run. Same binary, same version.
FROM otel/opentelemetry-collector:0.114.0 AS collector

FROM alpine:3.20
COPY --from=collector /otelcol /otelcol
USER 10001
ENTRYPOINT ["/otelcol"]
