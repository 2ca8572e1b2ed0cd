# syntax=docker/dockerfile:1
# ESI Federation image: esi-server and esi-cli, built in a Rust stage, run from distroless
# as the non-root user 65532 (`nonroot`), with nothing else in the image (no shell, no
# package manager). The binaries link only glibc (TLS is aws-lc-rs, compiled in), hence
# the `cc` distroless variant.
#
#   docker build -t esi-federation:0.1.0 .
#   docker run --rm esi-federation:0.1.0 --help
#   docker run --rm --entrypoint /usr/local/bin/esi-cli esi-federation:0.1.0 --help
#
# Both stages are Debian 12 (bookworm), so the builder's glibc is the runtime's.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# aws-lc-sys (TLS and JWT crypto) builds with the C toolchain of the image; cmake and clang
# are its fallback build path.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY schemas ./schemas
# esi-cli has a profile of its own (`release-cli`: size over peak speed, stripped) and an
# aws-lc without CPU jitter entropy, whose start-up sampling cost ~30 ms of CPU per run
# (it seeds from the kernel's getrandom and RDRAND instead); see docs/performance.md. The
# server keeps `release` and aws-lc's default entropy. Two profiles: two sets of
# dependencies built, in separate directories.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin esi-server \
 && AWS_LC_SYS_NO_JITTER_ENTROPY=1 cargo build --profile release-cli --locked --bin esi-cli \
 && mkdir -p /out \
 && cp target/release/esi-server target/release-cli/esi-cli /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/esi-server /out/esi-cli /usr/local/bin/
# The numeric id, so Kubernetes' runAsNonRoot can verify it without resolving a name.
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/esi-server"]
CMD ["serve", "--help"]
