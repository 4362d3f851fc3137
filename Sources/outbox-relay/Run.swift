import ArgumentParser
import Foundation
import Logging
import OutboxRelay
import ServiceLifecycle

private func help(_ flag: String) -> ArgumentHelp {
    ArgumentHelp(Settings.all.first { $0.flag == flag }!.helpText)
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Relay outbox rows to Kafka until SIGTERM/SIGINT.",
        discussion: "librdkafka properties: --kafka-property NAME=VALUE (repeatable) or OUTBOX_KAFKA_<NAME> with dots as underscores.")

    @Option(name: .customLong("database-url"), help: help("database-url")) var databaseURL: String?
    @Option(name: .customLong("brokers"), help: help("brokers")) var brokers: String?
    @Option(name: .customLong("table"), help: help("table")) var table: String?
    @Option(name: .customLong("batch-size"), help: help("batch-size")) var batchSize: String?
    @Option(name: .customLong("max-in-flight-rows"), help: help("max-in-flight-rows")) var maxInFlightRows: String?
    @Option(name: .customLong("max-in-flight-bytes"), help: help("max-in-flight-bytes")) var maxInFlightBytes: String?
    @Option(name: .customLong("poll-interval-ms"), help: help("poll-interval-ms")) var pollIntervalMs: String?
    @Option(name: .customLong("lease-duration-ms"), help: help("lease-duration-ms")) var leaseDurationMs: String?
    @Option(name: .customLong("heartbeat-interval-ms"), help: help("heartbeat-interval-ms")) var heartbeatIntervalMs: String?
    @Option(name: .customLong("message-timeout-ms"), help: help("message-timeout-ms")) var messageTimeoutMs: String?
    @Option(name: .customLong("statement-timeout-ms"), help: help("statement-timeout-ms")) var statementTimeoutMs: String?
    @Option(name: .customLong("shutdown-timeout-ms"), help: help("shutdown-timeout-ms")) var shutdownTimeoutMs: String?
    @Option(name: .customLong("retry-backoff-ms"), help: help("retry-backoff-ms")) var retryBackoffMs: String?
    @Option(name: .customLong("replica-name"), help: help("replica-name")) var replicaName: String?
    @Option(name: .customLong("kafka-property"), help: "librdkafka property NAME=VALUE, repeatable; wins over the relay's defaults [env: OUTBOX_KAFKA_<NAME>]")
    var kafkaProperty: [String] = []
    @Option(name: .customLong("log-level"), help: "trace|debug|info|notice|warning|error [env: OUTBOX_LOG_LEVEL] (default: info)")
    var logLevel: String?

    var flagValues: [String: String] {
        let pairs: [(String, String?)] = [
            ("database-url", databaseURL), ("brokers", brokers), ("table", table), ("batch-size", batchSize),
            ("max-in-flight-rows", maxInFlightRows), ("max-in-flight-bytes", maxInFlightBytes),
            ("poll-interval-ms", pollIntervalMs), ("lease-duration-ms", leaseDurationMs),
            ("heartbeat-interval-ms", heartbeatIntervalMs), ("message-timeout-ms", messageTimeoutMs),
            ("statement-timeout-ms", statementTimeoutMs), ("shutdown-timeout-ms", shutdownTimeoutMs),
            ("retry-backoff-ms", retryBackoffMs), ("replica-name", replicaName),
        ]
        var out: [String: String] = [:]
        for (k, v) in pairs { if let v { out[k] = v } }
        return out
    }

    func run() async throws {
        let logger = bootstrapLogging(level: logLevel)
        let relay: Relay
        do {
            let config = try Settings.resolve(flags: flagValues, kafkaProperties: kafkaProperty,
                                              environment: ProcessInfo.processInfo.environment)
            relay = try Relay(configuration: config, logger: logger)
            try await relay.start()
        } catch let error as RelayError {
            fail(error.description)
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: relay)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await group.run()
        } catch {
            fail("\(error)", code: 1)
        }
    }
}
