# syntax=docker/dockerfile:1
# Kiln's container image: build with the locked dependency set, ship only the binary on a
# distroless base that runs as a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not re-download and re-build them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked
COPY src ./src
COPY schemas ./schemas
RUN cargo build --release --locked --bin kiln \
    && strip target/release/kiln

# glibc + libgcc only (the binary links nothing else; TLS is rustls), no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["run"]
