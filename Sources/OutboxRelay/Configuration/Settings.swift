import Foundation
import Kafka

/// The one table of `run` settings: flag, environment variable, default and help. The command
/// line, `--help` and the README's configuration table are all derived from it.
///
/// Naming scheme: flag `--some-name` ⇔ environment `OUTBOX_SOME_NAME`; `OUTBOX_SOME_NAME_FILE`
/// reads the value from a file (container secrets). librdkafka properties pass through as
/// `--kafka-property name=value` or `OUTBOX_KAFKA_<NAME>` (dots written as underscores, e.g.
/// `OUTBOX_KAFKA_SASL_PASSWORD` → `sasl.password`). Precedence: flag > environment > default.
public struct Setting: Sendable {
    public let flag: String
    public let defaultText: String
    public let help: String
    let apply: @Sendable (inout RelayConfiguration, String) throws(RelayError) -> Void

    public var environmentVariable: String { Self.environmentName(flag) }

    public static func environmentName(_ flag: String) -> String {
        "OUTBOX_" + flag.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// `help` for ArgumentParser: text, environment variable and default.
    public var helpText: String { "\(help) [env: \(environmentVariable)] (default: \(defaultText))" }
}

public enum Settings {
    private static func int(_ flag: String, _ value: String) throws(RelayError) -> Int {
        guard let v = Int(value.trimmingCharacters(in: .whitespaces)) else {
            throw RelayError(.configuration, "invalid --\(flag) \"\(value)\": not an integer")
        }
        return v
    }

    private static func milliseconds(_ flag: String, _ value: String) throws(RelayError) -> Double {
        guard let v = Double(value.trimmingCharacters(in: .whitespaces)), v.isFinite else {
            throw RelayError(.configuration, "invalid --\(flag) \"\(value)\": not a number of milliseconds")
        }
        return v
    }

    public static let all: [Setting] = [
        Setting(flag: "layout", defaultText: "native", help: "native, or debezium: a table in Debezium's outbox layout (id, aggregatetype, aggregateid, type, payload), mapped as Debezium's EventRouter maps it; its options by --debezium-option NAME=VALUE") { c, v in c.layoutName = v },
        Setting(flag: "database-url", defaultText: "required", help: "PostgreSQL URL or conninfo; every libpq option (sslmode, sslrootcert, ...) passes through it") { c, v in c.databaseURL = v },
        Setting(flag: "brokers", defaultText: "required", help: "Kafka bootstrap brokers, HOST:PORT[,HOST:PORT...]") { c, v in c.brokers = v },
        Setting(flag: "table", defaultText: "outbox", help: "Outbox table, optionally SCHEMA.TABLE") { c, v in c.table = v },
        Setting(flag: "batch-size", defaultText: "1000", help: "Rows read per claim") { c, v throws(RelayError) in c.batchSize = try int("batch-size", v) },
        Setting(flag: "max-in-flight-rows", defaultText: "5000", help: "Rows produced but not yet deleted, at most") { c, v throws(RelayError) in c.maxInFlightRows = try int("max-in-flight-rows", v) },
        Setting(flag: "max-in-flight-bytes", defaultText: "16777216", help: "Bytes produced but not yet deleted, at most") { c, v throws(RelayError) in c.maxInFlightBytes = try int("max-in-flight-bytes", v) },
        Setting(flag: "poll-interval-ms", defaultText: "1000", help: "Claim without a notification this often (NOTIFY wakes the relay at once)") { c, v throws(RelayError) in c.pollIntervalMillis = try int("poll-interval-ms", v) },
        Setting(flag: "busy-poll-ms", defaultText: "5 (at most the poll interval)", help: "While rows arrive faster than about one per 1.5 x this, claim this often instead of on each commit's NOTIFY; larger batches more rows per claim at up to this much more latency; at most --poll-interval-ms") { c, v throws(RelayError) in c.busyPollMillis = try int("busy-poll-ms", v) },
        Setting(flag: "latency-target-ms", defaultText: "\(RelayConfiguration.defaultLatencyTargetMillis) (at most the poll interval)", help: "The p99 a row may take from its commit to the broker's acknowledgement while a caught-up replica waits for more rows to claim with it (decimals allowed): it lingers after a notification and lengthens the busy poll by what of this its measured delays (the database's and the broker's acknowledgements) leave, steered by its rows' own latencies; 0 claims at once") { c, v throws(RelayError) in c.latencyTargetMillis = try milliseconds("latency-target-ms", v) },
        Setting(flag: "lease-duration-ms", defaultText: "30000", help: "Shard lease duration; must exceed message timeout + reconnect backoff + statement timeout + 1 s") { c, v throws(RelayError) in c.leaseDurationMillis = try int("lease-duration-ms", v) },
        Setting(flag: "heartbeat-interval-ms", defaultText: "lease duration / 6", help: "Lease renewal interval") { c, v throws(RelayError) in c.heartbeatIntervalMillis = try int("heartbeat-interval-ms", v) },
        Setting(flag: "message-timeout-ms", defaultText: "10000", help: "librdkafka message.timeout.ms: a message's final delivery report comes within this") { c, v throws(RelayError) in c.messageTimeoutMillis = try int("message-timeout-ms", v) },
        Setting(flag: "statement-timeout-ms", defaultText: "5000", help: "PostgreSQL statement_timeout and lock_timeout of the relay's sessions") { c, v throws(RelayError) in c.statementTimeoutMillis = try int("statement-timeout-ms", v) },
        Setting(flag: "shutdown-timeout-ms", defaultText: "10000", help: "On SIGTERM, how long to wait for outstanding delivery reports") { c, v throws(RelayError) in c.shutdownTimeoutMillis = try int("shutdown-timeout-ms", v) },
        Setting(flag: "retry-backoff-ms", defaultText: "100", help: "First retry delay of a failed row (doubles per attempt, with jitter)") { c, v throws(RelayError) in c.retryBackoffMillis = try int("retry-backoff-ms", v) },
        Setting(flag: "retry-backoff-max-ms", defaultText: "30000", help: "Upper bound of the per-row retry delay") { c, v throws(RelayError) in c.retryBackoffMaxMillis = try int("retry-backoff-max-ms", v) },
        Setting(flag: "max-attempts", defaultText: "10", help: "Failed attempts after which a row is dead-lettered (environment failures such as an unreachable broker never count)") { c, v throws(RelayError) in c.maxAttempts = try int("max-attempts", v) },
        Setting(flag: "dead-letter-topic", defaultText: "none", help: "Also produce dead-lettered rows to this topic, with the reason in headers") { c, v in c.deadLetterTopic = v },
        Setting(flag: "watchdog-ms", defaultText: "2 x message timeout + 5000", help: "Re-create the producer when rows have awaited a delivery report or a retry this long with no delivery succeeding") { c, v throws(RelayError) in c.watchdogMillis = try int("watchdog-ms", v) },
        Setting(flag: "created-at-header", defaultText: "none", help: "Add the row's created_at (RFC 3339) in this header") { c, v in c.shape.createdAtHeader = v },
        Setting(flag: "relay-header", defaultText: "none", help: "Add the relaying replica's name in this header") { c, v in c.shape.relayHeader = v },
        Setting(flag: "cloudevents-source", defaultText: "none", help: "Add CloudEvents binary-mode headers (ce_specversion, ce_id, ce_source = this, ce_type, ce_time); a row's own ce_* headers win") { c, v in c.shape.cloudEventsSource = v },
        Setting(flag: "http-port", defaultText: "8080", help: "Port of /healthz, /readyz and /metrics (0 picks a free port)") { c, v throws(RelayError) in c.httpPort = try int("http-port", v) },
        Setting(flag: "http-host", defaultText: "0.0.0.0", help: "Address the HTTP endpoints bind to") { c, v in c.httpHost = v },
        Setting(flag: "tracing", defaultText: "off", help: "off, or otlp: a span per relayed row (continuing the row's traceparent), sent over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (other OTEL_* variables apply)") { c, v throws(RelayError) in
            guard let mode = RelayConfiguration.TracingMode(rawValue: v.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw RelayError(.configuration, "invalid --tracing \"\(v)\": expected off or otlp")
            }
            c.tracing = mode
        },
        Setting(flag: "replica-name", defaultText: "HOST-PID-RANDOM", help: "This replica's name in the replicas table") { c, v in c.replicaName = v },
        Setting(flag: "shard-spread", defaultText: "load", help: "load: as few replicas hold the shards as their load needs (more when those are over 70 % busy, fewer below 35 %), the others stand by and take over when a holder dies; even: every replica holds an even share whatever the load") { c, v throws(RelayError) in
            guard let spread = ShardSpread(rawValue: v.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw RelayError(.configuration, "invalid --shard-spread \"\(v)\": expected load or even")
            }
            c.shardSpread = spread
        },
    ]

    /// Resolves flags (by flag name), the environment and defaults into a configuration.
    public static func resolve(flags: [String: String], kafkaProperties: [String] = [], debeziumOptions: [String] = [],
                               environment: [String: String], file: [String: String] = [:]) throws(RelayError) -> RelayConfiguration {
        var config = RelayConfiguration(databaseURL: "", brokers: "")
        for key in file.keys where !key.hasPrefix("kafka.") && !key.hasPrefix("debezium.") && !all.contains(where: { $0.flag == key }) && !["log-level", "log-format"].contains(key) {
            throw RelayError(.configuration, "unknown setting \"\(key)\" in the configuration file")
        }
        // librdkafka properties from the file come first: environment and flags win over them.
        for (key, value) in file.sorted(by: { $0.key < $1.key }) where key.hasPrefix("kafka.") {
            config.kafkaProperties.append((String(key.dropFirst("kafka.".count)), value))
        }
        for setting in all {
            if let v = flags[setting.flag] {
                try setting.apply(&config, v)
            } else if let v = try environmentValue(setting.environmentVariable, environment) {
                try setting.apply(&config, v)
            } else if let v = file[setting.flag] {
                try setting.apply(&config, v)
            }
        }
        // Kafka pass-through: environment first, then flags (later wins). `…_FILE` reads the value
        // from a file — unless the whole name is itself a librdkafka property (librdkafka has
        // properties ending in `.file`, e.g. sasl.oauthbearer.assertion.private.key.file).
        func indirect(_ name: String) -> Bool {
            name.hasSuffix("_FILE") && !KafkaConfiguration.isKnownProperty(kafkaPropertyName(fromEnvironment: name))
        }
        for (name, value) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix("OUTBOX_KAFKA_") && !indirect(name) {
            config.kafkaProperties.append((kafkaPropertyName(fromEnvironment: name), value))
        }
        for (name, _) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix("OUTBOX_KAFKA_") && indirect(name) {
            let base = String(name.dropLast(5))
            if environment[base] == nil, let v = try environmentValue(base, environment) {
                config.kafkaProperties.append((kafkaPropertyName(fromEnvironment: base), v))
            }
        }
        // Debezium EventRouter options: file `debezium.<name>`, then OUTBOX_DEBEZIUM_<NAME>
        // (underscores for dots), then --debezium-option NAME=VALUE; later wins.
        var routing: [(String, String)] = []
        for (key, value) in file.sorted(by: { $0.key < $1.key }) where key.hasPrefix("debezium.") {
            routing.append((String(key.dropFirst("debezium.".count)), value))
        }
        for (name, value) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix(debeziumEnvironmentPrefix) {
            routing.append((propertyName(fromEnvironment: name, prefix: debeziumEnvironmentPrefix), value))
        }
        routing += try nameValuePairs(debeziumOptions, flag: "debezium-option")
        config.layout = try OutboxLayout.parse(config.layoutName, options: routing)
        config.kafkaProperties += try nameValuePairs(kafkaProperties, flag: "kafka-property")
        return config
    }

    /// `NAME=VALUE` arguments of a repeatable flag, each refused (naming the flag) without a name.
    static func nameValuePairs(_ entries: [String], flag: String) throws(RelayError) -> [(String, String)] {
        var out: [(String, String)] = []
        for entry in entries {
            guard let eq = entry.firstIndex(of: "="), eq != entry.startIndex else {
                throw RelayError(.configuration, "invalid --\(flag) \"\(entry.prefix { $0 != "=" })\": expected NAME=VALUE")
            }
            out.append((String(entry[..<eq]), String(entry[entry.index(after: eq)...])))
        }
        return out
    }

    /// Reads a configuration file: one `name = value` per line (`#` comments), names as the flags
    /// without dashes in front (`batch-size = 500`), librdkafka properties as `kafka.<name>`.
    public static func readFile(_ path: String) throws(RelayError) -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RelayError(.configuration, "cannot read --config file \"\(path)\"")
        }
        var out: [String: String] = [:]
        for (n, raw) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw RelayError(.configuration, "--config \(path) line \(n + 1): expected name = value")
            }
            var value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            out[line[..<eq].trimmingCharacters(in: .whitespaces)] = value
        }
        return out
    }

    /// `OUTBOX_KAFKA_SASL_PASSWORD` → `sasl.password`.
    public static func kafkaPropertyName(fromEnvironment name: String) -> String {
        propertyName(fromEnvironment: name, prefix: "OUTBOX_KAFKA_")
    }

    static let debeziumEnvironmentPrefix = "OUTBOX_DEBEZIUM_"

    /// A pass-through property's name from its environment variable: the prefix dropped,
    /// lowercased, underscores as dots (`OUTBOX_DEBEZIUM_ROUTE_BY_FIELD` → `route.by.field`).
    static func propertyName(fromEnvironment name: String, prefix: String) -> String {
        String(name.dropFirst(prefix.count)).lowercased().replacingOccurrences(of: "_", with: ".")
    }

    /// `NAME` from the environment, else the contents of the file named by `NAME_FILE`.
    static func environmentValue(_ name: String, _ environment: [String: String]) throws(RelayError) -> String? {
        if let v = environment[name] { return v }
        guard let path = environment[name + "_FILE"] else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RelayError(.configuration, "cannot read \(name)_FILE \"\(path)\"")
        }
        var text = String(decoding: data, as: UTF8.self)
        while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
        return text
    }
}

extension Settings {
    /// The README's configuration table, generated from ``all`` (a test keeps them identical).
    public static func markdownTable() -> String {
        var lines = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
        for s in all {
            lines.append("| `--\(s.flag)` | `\(s.environmentVariable)` | \(s.defaultText) | \(s.help) |")
        }
        lines.append("| `--kafka-property NAME=VALUE` | `OUTBOX_KAFKA_<NAME>` | — | any librdkafka property, by its librdkafka name (dots as underscores in the variable) |")
        lines.append("| `--debezium-option NAME=VALUE` | `OUTBOX_DEBEZIUM_<NAME>` | — | an option of Debezium's outbox EventRouter, by its Debezium name (with `--layout debezium`; see \"Coming from Debezium\") |")
        lines.append("| `--log-level` | `OUTBOX_LOG_LEVEL` | info | trace, debug, info, notice, warning, error |")
        lines.append("| `--log-format` | `OUTBOX_LOG_FORMAT` | text | text, or json (one object per line, dotted metadata keys) |")
        lines.append("| `--config FILE` | `OUTBOX_CONFIG` | none | a file of `name = value` lines (flag names; `kafka.<property>` for librdkafka); flags > environment > file > defaults |")
        return lines.joined(separator: "\n")
    }
}
