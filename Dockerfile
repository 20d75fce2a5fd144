# The weft image: `weft` (router, CLI, install-cni) and `weft-cni` (the CNI plugin), plus the
# reference portmap plugin for nodes that have none. Build from the repository root:
#   docker build -t weft:0.1.0 .
# (not built in CI: no container engine there; deploy/weft.yaml names this tag.)

# The toolchain version follows rust-toolchain.toml.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft-router -p weft-cni --bins \
 && install -D -m 0755 target/release/weft /out/usr/local/bin/weft \
 && install -D -m 0755 target/release/weft-cni /out/usr/local/bin/weft-cni

# portmap, from Debian's containernetworking-plugins (same release as the runtime image).
FROM debian:bookworm-slim AS plugins
RUN apt-get update \
 && apt-get install -y --no-install-recommends containernetworking-plugins \
 && install -D -m 0755 /usr/lib/cni/portmap /out/usr/lib/cni/portmap

# Runtime: glibc and libgcc only (the binaries link nothing else); no shell, no package manager.
# `kubectl exec ... -- weft status` runs the binary directly.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/ /
COPY --from=plugins /out/ /
ENTRYPOINT ["/usr/local/bin/weft"]
CMD ["router", "--kube-peers"]
