# syntax=docker/dockerfile:1
#
# One image, three programs: /bridge, /submitter and /mirror. The Kubernetes manifests
# pick one with `command:`; locally:
#
#   docker build -t ghcr.io/kreabus/kreabus:0.1.0 .
#   docker run --rm ghcr.io/kreabus/kreabus:0.1.0 /submitter --help
#
# Static binaries (CGO off) on distroless "static" as the nonroot user 65532:
# no shell, no package manager, nothing to patch but the Go code.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
# GOWORK=off: the image is the root module alone; go.work only adds the
# k8s manifests' test module, whose dependencies the image does not need.
ENV CGO_ENABLED=0 GOWORK=off

# Dependencies first: this layer is reused until go.mod / go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w" -o /out/ ./cmd/bridge ./cmd/submitter ./cmd/mirror

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bridge /bridge
COPY --from=build /out/submitter /submitter
COPY --from=build /out/mirror /mirror
USER 65532:65532
# 8080: webhooks (bridge only); 9090: /metrics, /healthz, /readyz (all).
EXPOSE 8080 9090
# Default program: the bridge. The manifests always name one with `command:`.
CMD ["/bridge"]
