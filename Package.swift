// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "outbox-relay",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "outbox-relay", targets: ["outbox-relay"]),
        .library(name: "OutboxRelay", targets: ["OutboxRelay"]),
        .library(name: "OutboxWriter", targets: ["OutboxWriter"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.1.0"),
        // OTLP over HTTP only: the gRPC exporter would pull grpc-swift into every build.
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.0.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.65.0"),
    ],
    targets: [
        // C stays in one place: two thin system-library targets, one Swift module over each,
        // and the one Linux header Swift's Glibc module leaves out (timerfd, for WakeTimer).
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CKafka", pkgConfig: "rdkafka", providers: [.apt(["librdkafka-dev"])]),
        .systemLibrary(name: "CTimerFD"),
        .target(name: "PGClient", dependencies: [
            "CLibPQ",
        ]),
        .target(name: "Kafka", dependencies: [
            "CKafka",
        ]),
        .target(name: "OutboxRelay", dependencies: [
            "PGClient", "Kafka", "CTimerFD",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ]),
        // The operator-facing HTTP endpoints (/healthz, /readyz, /metrics).
        .target(name: "RelayHTTP", dependencies: [
            "OutboxRelay",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "OTel", package: "swift-otel"),
        ]),
        // For applications: writes outbox rows inside the application's own transaction, over
        // postgres-nio (what Vapor and Hummingbird applications already use). No libpq, no librdkafka.
        .target(name: "OutboxWriter", dependencies: [
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ]),
        .executableTarget(name: "outbox-relay", dependencies: [
            "OutboxRelay", "RelayHTTP",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .testTarget(name: "OutboxRelayTests", dependencies: [
            "OutboxRelay", "PGClient", "Kafka", "RelayHTTP",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .testTarget(name: "OutboxWriterTests", dependencies: [
            "OutboxWriter", "Kafka",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
        ]),
    ]
)
