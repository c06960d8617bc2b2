# syntax=docker/dockerfile:1
# Kiln's container image: build with the locked dependency set, ship only the binary on a
# distroless base that runs as a non-root user.
#
# The base images are build arguments, so that a machine without access to a registry can
# substitute equivalent local images (hack/image.sh does; docs/operations.md).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, so that source edits do not re-download them. The registry and the
# target directory are cache mounts: a rebuild after a source edit compiles only Kiln.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,id=kiln-cargo-registry,target=/usr/local/cargo/registry \
    mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked
COPY build.rs ./
COPY src ./src
COPY schemas ./schemas
# The commit `kiln version` reports: .git is not in the build context (.dockerignore), so the
# builder passes it (hack/image.sh and the release workflow do); without it, "unknown".
ARG KILN_GIT_COMMIT=
RUN --mount=type=cache,id=kiln-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=kiln-target,target=/src/target \
    cargo build --release --locked --bin kiln \
    && strip -o /usr/local/bin/kiln target/release/kiln

# glibc + libgcc only (the binary links nothing else; TLS is rustls), no shell, uid 65532.
FROM ${RUNTIME_IMAGE}
COPY --from=build /usr/local/bin/kiln /usr/local/bin/kiln
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["run"]
