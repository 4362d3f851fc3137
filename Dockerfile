# outbox-relay container image: build with the Swift toolchain, run on slim Debian.
# Both stages are Debian 12 (bookworm), so the libraries built in one load in the other.

# ---------------------------------------------------------------------------------------------
# Swift 6.2 at least: swift-otel's manifest (OTLP tracing) needs tools version 6.2.
FROM swift:6.2-bookworm AS build

# libpq-dev for the CLibPQ target; the rest builds librdkafka (same list as scripts/bootstrap;
# libcurl4-openssl-dev for SASL/OAUTHBEARER OIDC). xz-utils only in case the Debian orig tarball
# is ever .tar.xz.
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get -q update \
 && apt-get -q install -y --no-install-recommends \
      libpq-dev build-essential pkg-config zlib1g-dev libssl-dev libsasl2-dev libzstd-dev \
      liblz4-dev libcurl4-openssl-dev python3 ca-certificates dpkg-dev xz-utils \
 && rm -rf /var/lib/apt/lists/*

# librdkafka >= 2.10 is required (bookworm's 2.0.2 mis-parses KIP-482 tagged fields; 2.8-2.9
# crash on topic-error metadata), so build Debian forky's source package into /usr/local, as
# scripts/bootstrap does, with libcurl (--enable-curl fails rather than silently dropping it):
# sasl.oauthbearer.method=oidc needs it. Private apt sources/lists keep the image's own apt state
# on bookworm; the mirror is whichever one the base image is configured with, never a hard-coded
# host.
RUN set -eu; \
    work=/tmp/rdkafka; mkdir -p "$work/lists/partial" "$work/src" "$work/tree"; \
    mirror="$(grep -E '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}' | grep -v security | head -n1)"; \
    [ -n "$mirror" ] || { echo "no Debian mirror in /etc/apt/sources.list.d/debian.sources" >&2; exit 1; }; \
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror forky main" > "$work/sources.list"; \
    aptopts="-o Dir::Etc::sourcelist=$work/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$work/lists -o APT::Get::List-Cleanup=0"; \
    apt-get $aptopts -q update; \
    (cd "$work/src" && apt-get $aptopts source --download-only librdkafka/forky); \
    tar -C "$work/tree" -xf "$(ls "$work"/src/librdkafka_*.orig.tar.* | head -n1)"; \
    cd "$(find "$work/tree" -mindepth 1 -maxdepth 1 -type d | head -n1)"; \
    ./configure --prefix=/usr/local --disable-debug-symbols --enable-curl; \
    make -C src -j"$(nproc)"; \
    make -C src install; \
    ldconfig; \
    ldd /usr/local/lib/librdkafka.so.1 | grep -q 'libcurl\.so'; \
    echo "librdkafka $(pkg-config --modversion rdkafka) installed in /usr/local"; \
    rm -rf "$work"

# Only what the product build reads. Tests/ is copied because SwiftPM insists that the declared
# test target's directory exists, even when building just the executable product.
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product outbox-relay \
 && mkdir -p /out \
 && cp "$(swift build -c release --show-bin-path)/outbox-relay" /out/outbox-relay

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# Runtime libraries only: libpq for PostgreSQL, and what librdkafka was linked against
# (OpenSSL, Cyrus SASL, zstd, lz4, zlib, and libcurl4 — the OpenSSL flavour — for OIDC token
# requests). libstdc++6/libgcc-s1 for the Swift runtime come with the base image.
# ca-certificates for TLS to brokers, databases and the OIDC token endpoint. curl for container
# health checks against the relay's HTTP port (docker-compose.yml: GET /readyz).
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get -q update \
 && apt-get -q install -y --no-install-recommends \
      libpq5 libssl3 libsasl2-2 libzstd1 liblz4-1 zlib1g libcurl4 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# librdkafka as built above (/usr/local/lib is already on Debian's ld.so path).
COPY --from=build /usr/local/lib/librdkafka.so* /usr/local/lib/

# The Swift runtime (stdlib, Concurrency, Foundation, Dispatch, ICU data) is linked dynamically;
# the swift:*-bookworm image unpacks the toolchain at /, so these live in /usr/lib/swift/linux.
COPY --from=build /usr/lib/swift/linux/*.so /usr/lib/swift/linux/
RUN echo /usr/lib/swift/linux > /etc/ld.so.conf.d/swift.conf && ldconfig

COPY --from=build /out/outbox-relay /usr/local/bin/outbox-relay

# Fail the image build, not the first deploy, if any shared library is missing.
RUN /usr/local/bin/outbox-relay --help > /dev/null

# Never run as root; a fixed uid so orchestrators can enforce runAsNonRoot / file ownership.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin relay
USER relay

# HTTP: GET /healthz (liveness), /readyz (readiness), /metrics (Prometheus); --http-port.
EXPOSE 8080
# The relay drains in-flight deliveries on SIGTERM (see --shutdown-timeout-ms); exec-form
# ENTRYPOINT makes it PID 1 so it receives the signal directly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
