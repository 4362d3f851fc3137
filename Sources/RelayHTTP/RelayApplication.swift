import Foundation
import Kafka
import Logging
import OTel
import OutboxRelay
import Prometheus
import ServiceLifecycle
import Tracing

/// The service graph `outbox-relay run` starts, built apart from `@main` so that the command and
/// the tests start the same thing (hummingbird's `buildApplication` pattern).
public struct RelayApplication: Sendable {
    public let relay: Relay
    public let http: RelayHTTPServer
    /// The OTLP span exporter's service (`tracing = otlp`): flushes and stops after the relay.
    public let tracing: (any Service)?

    /// Names a file to which every acknowledged row's outbox id and acknowledgement time (µs since
    /// the epoch, taken on librdkafka's broker thread) are appended: how `scripts/bench` measures
    /// COMMIT → acknowledgement per row. Unset in any deployment.
    public static let ackLogVariable = "OUTBOX_RELAY_ACK_LOG"

    /// Creates the relay and connects and checks it (refusing a bad configuration with a
    /// ``RelayError`` that names it), and its HTTP server on the configured host and port.
    public static func build(configuration: RelayConfiguration, registry: PrometheusCollectorRegistry,
                             logger: Logger) async throws(RelayError) -> RelayApplication {
        RelayMetrics.recordBuildInfo(version: RelayVersion.current, librdkafka: Librdkafka.versionString)
        var configuration = configuration
        var tracing: (any Service)?
        if configuration.tracing == .otlp, configuration.tracer == nil {
            let backend = try otlpTracing(logger: logger)
            configuration.tracer = backend.tracer
            tracing = backend.service
        }
        let relay = try Relay(configuration: configuration, logger: logger)
        if let path = ProcessInfo.processInfo.environment[ackLogVariable], !path.isEmpty {
            // A measuring aid for scripts/bench (exact COMMIT → acknowledgement per row), not a setting.
            do {
                try relay.ackLatency.openLog(path: path)
            } catch {
                throw RelayError(.configuration, "\(ackLogVariable): \(error)")
            }
            logger.notice("logging every acknowledgement", metadata: ["path": "\(path)"])
        }
        try await relay.start()
        let http = RelayHTTPServer(relay: relay, registry: registry, host: configuration.httpHost,
                                   port: configuration.httpPort, logger: logger)
        return RelayApplication(relay: relay, http: http, tracing: tracing)
    }

    /// swift-otel's tracer with its OTLP/HTTP exporter: W3C trace context, service name
    /// `outbox-relay` unless OTEL_SERVICE_NAME says otherwise, and every other OTEL_* variable
    /// (endpoint, headers, sampler, batch settings) applied by swift-otel. Logs and metrics stay
    /// with the relay's own logger and Prometheus endpoint.
    public static func otlpTracing(logger: Logger, endpoint: String? = nil) throws(RelayError) -> (tracer: any Tracer, service: any Service) {
        var otel = OTel.Configuration.default
        otel.serviceName = "outbox-relay"
        otel.resourceAttributes["service.version"] = RelayVersion.current
        otel.logs.enabled = false
        otel.metrics.enabled = false
        otel.traces.enabled = true
        otel.traces.exporter = .otlp
        otel.traces.otlpExporter.protocol = .httpProtobuf
        otel.propagators = [.traceContext]
        otel.diagnosticLogger = .custom(logger)
        if let endpoint { otel.traces.otlpExporter.endpoint = endpoint }
        do {
            let backend = try OTel.makeTracingBackend(configuration: otel)
            return (backend.factory, backend.service)
        } catch {
            throw RelayError(.configuration, "cannot set up OTLP tracing (--tracing otlp; check the OTEL_EXPORTER_OTLP_* variables): \(error)")
        }
    }

    /// The Prometheus factory `main` bootstraps swift-metrics with: the relay's histograms get
    /// buckets that resolve its real latencies.
    public static func metricsFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[RelayMetrics.commitToAckLabel] = RelayMetrics.commitToAckBuckets
        factory.durationHistogramBuckets[RelayMetrics.statementLabel] = RelayMetrics.statementBuckets
        return factory
    }

    /// The services in one group, shut down on SIGTERM/SIGINT when `signals` (the command) or
    /// by cancelling the task running it (tests), in reverse order: the relay first, then the HTTP
    /// server (/readyz answers 503 while the relay drains), then the span exporter, which thus
    /// still sends the spans of the relay's last deliveries.
    public func serviceGroup(logger: Logger, signals: Bool = true) -> ServiceGroup {
        ServiceGroup(configuration: .init(
            services: (tracing.map { [ServiceGroupConfiguration.ServiceConfiguration(service: $0)] } ?? [])
                + [.init(service: http), .init(service: relay)],
            gracefulShutdownSignals: signals ? [.sigterm, .sigint] : [],
            logger: logger))
    }
}
