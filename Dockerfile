# syntax=docker/dockerfile:1
# datasync in a small, non-root image: build with the Rust toolchain, ship the stripped binary
# on distroless (glibc + CA certificates, no shell, user 65532 "nonroot").
#   docker build -t datasync .
#   docker run --rm -v "$PWD:/work" -w /work datasync plan
# scripts/docker-build.sh builds it and checks it (CI runs it when Docker is present).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY schemas ./schemas
COPY sync.example.yaml ./
ENV CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_DEBUG=false
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && cp target/release/datasync /usr/local/bin/datasync

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/datasync /usr/local/bin/datasync
COPY --from=build /src/sync.example.yaml /usr/share/datasync/sync.example.yaml
USER nonroot:nonroot
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/datasync"]
CMD ["--help"]
