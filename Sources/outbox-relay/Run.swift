import ArgumentParser
import Foundation
import Kafka
import Logging
import Metrics
import OutboxRelay
import Prometheus
import RelayHTTP
import ServiceLifecycle

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Relay outbox rows to Kafka until SIGTERM/SIGINT.",
        discussion: "librdkafka properties: --kafka-property NAME=VALUE (repeatable) or OUTBOX_KAFKA_<NAME> with dots as underscores.")

    @OptionGroup var database: DatabaseOptions
    @Option(name: .customLong("brokers"), help: settingHelp("brokers")) var brokers: String?
    @Option(name: .customLong("batch-size"), help: settingHelp("batch-size")) var batchSize: String?
    @Option(name: .customLong("max-in-flight-rows"), help: settingHelp("max-in-flight-rows")) var maxInFlightRows: String?
    @Option(name: .customLong("max-in-flight-bytes"), help: settingHelp("max-in-flight-bytes")) var maxInFlightBytes: String?
    @Option(name: .customLong("poll-interval-ms"), help: settingHelp("poll-interval-ms")) var pollIntervalMs: String?
    @Option(name: .customLong("busy-poll-ms"), help: settingHelp("busy-poll-ms")) var busyPollMs: String?
    @Option(name: .customLong("latency-target-ms"), help: settingHelp("latency-target-ms")) var latencyTargetMs: String?
    @Option(name: .customLong("lease-duration-ms"), help: settingHelp("lease-duration-ms")) var leaseDurationMs: String?
    @Option(name: .customLong("heartbeat-interval-ms"), help: settingHelp("heartbeat-interval-ms")) var heartbeatIntervalMs: String?
    @Option(name: .customLong("message-timeout-ms"), help: settingHelp("message-timeout-ms")) var messageTimeoutMs: String?
    @Option(name: .customLong("statement-timeout-ms"), help: settingHelp("statement-timeout-ms")) var statementTimeoutMs: String?
    @Option(name: .customLong("shutdown-timeout-ms"), help: settingHelp("shutdown-timeout-ms")) var shutdownTimeoutMs: String?
    @Option(name: .customLong("retry-backoff-ms"), help: settingHelp("retry-backoff-ms")) var retryBackoffMs: String?
    @Option(name: .customLong("replica-name"), help: settingHelp("replica-name")) var replicaName: String?
    @Option(name: .customLong("shard-spread"), help: settingHelp("shard-spread")) var shardSpread: String?
    @Option(name: .customLong("retry-backoff-max-ms"), help: settingHelp("retry-backoff-max-ms")) var retryBackoffMaxMs: String?
    @Option(name: .customLong("max-attempts"), help: settingHelp("max-attempts")) var maxAttempts: String?
    @Option(name: .customLong("dead-letter-topic"), help: settingHelp("dead-letter-topic")) var deadLetterTopic: String?
    @Option(name: .customLong("watchdog-ms"), help: settingHelp("watchdog-ms")) var watchdogMs: String?
    @Option(name: .customLong("created-at-header"), help: settingHelp("created-at-header")) var createdAtHeader: String?
    @Option(name: .customLong("relay-header"), help: settingHelp("relay-header")) var relayHeader: String?
    @Option(name: .customLong("cloudevents-source"), help: settingHelp("cloudevents-source")) var cloudEventsSource: String?
    @Option(name: .customLong("http-port"), help: settingHelp("http-port")) var httpPort: String?
    @Option(name: .customLong("http-host"), help: settingHelp("http-host")) var httpHost: String?
    @Option(name: .customLong("tracing"), help: settingHelp("tracing")) var tracing: String?
    @Option(name: .customLong("log-format"), help: "text|json [env: OUTBOX_LOG_FORMAT] (default: text)") var logFormat: String?
    @Option(name: .customLong("config"), help: "File of `name = value` settings; flags > environment > file > defaults [env: OUTBOX_CONFIG] (default: none)")
    var config: String?
    @Option(name: .customLong("kafka-property"), help: "librdkafka property NAME=VALUE, repeatable; wins over the relay's defaults [env: OUTBOX_KAFKA_<NAME>]")
    var kafkaProperty: [String] = []
    @Option(name: .customLong("log-level"), help: "trace|debug|info|notice|warning|error [env: OUTBOX_LOG_LEVEL] (default: info)")
    var logLevel: String?

    var flagValues: [String: String] {
        let pairs: [(String, String?)] = [
            ("brokers", brokers), ("batch-size", batchSize),
            ("max-in-flight-rows", maxInFlightRows), ("max-in-flight-bytes", maxInFlightBytes),
            ("poll-interval-ms", pollIntervalMs), ("busy-poll-ms", busyPollMs), ("latency-target-ms", latencyTargetMs), ("lease-duration-ms", leaseDurationMs),
            ("heartbeat-interval-ms", heartbeatIntervalMs), ("message-timeout-ms", messageTimeoutMs),
            ("statement-timeout-ms", statementTimeoutMs), ("shutdown-timeout-ms", shutdownTimeoutMs),
            ("retry-backoff-ms", retryBackoffMs), ("replica-name", replicaName), ("shard-spread", shardSpread),
            ("retry-backoff-max-ms", retryBackoffMaxMs), ("max-attempts", maxAttempts),
            ("dead-letter-topic", deadLetterTopic), ("watchdog-ms", watchdogMs),
            ("http-port", httpPort), ("http-host", httpHost), ("created-at-header", createdAtHeader),
            ("relay-header", relayHeader), ("cloudevents-source", cloudEventsSource), ("tracing", tracing),
        ]
        var out = database.flagValues
        for (k, v) in pairs { if let v { out[k] = v } }
        return out
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        var file: [String: String] = [:]
        if let path = config ?? env["OUTBOX_CONFIG"] {
            do { file = try Settings.readFile(path) } catch { fail(error.description) }
        }
        let logger = bootstrapLogging(level: logLevel, format: logFormat, file: file)
        // Prometheus is bootstrapped here, in main only; the relay records through swift-metrics.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(RelayApplication.metricsFactory(registry: registry))
        let application: RelayApplication
        do {
            let configuration = try Settings.resolve(flags: flagValues, kafkaProperties: kafkaProperty,
                                                      debeziumOptions: database.debeziumOption, environment: env, file: file)
            application = try await RelayApplication.build(configuration: configuration, registry: registry, logger: logger)
        } catch {
            fail(error.description)
        }
        do {
            try await application.serviceGroup(logger: logger).run()
        } catch {
            fail("\(error)", code: 1)
        }
    }
}
