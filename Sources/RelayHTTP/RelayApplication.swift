import Kafka
import Logging
import OutboxRelay
import Prometheus
import ServiceLifecycle

/// The service graph `outbox-relay run` starts, built apart from `@main` so that the command and
/// the tests start the same thing (hummingbird's `buildApplication` pattern).
public struct RelayApplication: Sendable {
    public let relay: Relay
    public let http: RelayHTTPServer

    /// Creates the relay and connects and checks it (refusing a bad configuration with a
    /// ``RelayError`` that names it), and its HTTP server on the configured host and port.
    public static func build(configuration: RelayConfiguration, registry: PrometheusCollectorRegistry,
                             logger: Logger) async throws(RelayError) -> RelayApplication {
        RelayMetrics.recordBuildInfo(version: RelayVersion.current, librdkafka: Librdkafka.versionString)
        let relay = try Relay(configuration: configuration, logger: logger)
        try await relay.start()
        let http = RelayHTTPServer(relay: relay, registry: registry, host: configuration.httpHost,
                                   port: configuration.httpPort, logger: logger)
        return RelayApplication(relay: relay, http: http)
    }

    /// The Prometheus factory `main` bootstraps swift-metrics with: the relay's histograms get
    /// buckets that resolve its real latencies.
    public static func metricsFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[RelayMetrics.commitToAckLabel] = RelayMetrics.commitToAckBuckets
        factory.durationHistogramBuckets[RelayMetrics.statementLabel] = RelayMetrics.statementBuckets
        return factory
    }

    /// Both services in one group, shut down on SIGTERM/SIGINT when `signals` (the command) or
    /// by cancelling the task running it (tests). The HTTP server is listed first so it is shut
    /// down last: /readyz answers 503 while the relay drains.
    public func serviceGroup(logger: Logger, signals: Bool = true) -> ServiceGroup {
        ServiceGroup(configuration: .init(
            services: [.init(service: http), .init(service: relay)],
            gracefulShutdownSignals: signals ? [.sigterm, .sigint] : [],
            logger: logger))
    }
}
