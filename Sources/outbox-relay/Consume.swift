import ArgumentParser
import Foundation
import Kafka
import OutboxRelay
import PGClient

struct Consume: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every message of a topic from the beginning (topic, partition, offset, key, headers), streaming.",
        discussion: "Reads a SASL/TLS cluster with the same librdkafka properties as `run`: --kafka-property NAME=VALUE or OUTBOX_KAFKA_<NAME> (also _FILE).")

    @Option(name: .customLong("brokers"), help: settingHelp("brokers")) var brokers: String?
    @Option(name: .customLong("topic"), help: "Topic to read") var topic: String
    @Flag(name: .customLong("values"), help: "Also print values") var values = false
    @Flag(name: .customLong("timestamps"), help: "Also print each message's timestamp (ms since the epoch), after its offset")
    var timestamps = false
    @Option(name: .customLong("kafka-property"), help: "librdkafka property NAME=VALUE, repeatable [env: OUTBOX_KAFKA_<NAME>]")
    var kafkaProperty: [String] = []

    func run() throws {
        let settings: RelayConfiguration
        do {
            settings = try Settings.resolve(flags: brokers.map { ["brokers": $0] } ?? [:], kafkaProperties: kafkaProperty,
                                            environment: ProcessInfo.processInfo.environment)
        } catch {
            fail(error.description)
        }
        guard !settings.brokers.isEmpty else { fail("missing --brokers (OUTBOX_BROKERS)") }
        // Only what the user passed through: the relay's producer settings mean nothing to a reader.
        var kafka = KafkaConfiguration([("bootstrap.servers", settings.brokers)])
        for (k, v) in settings.kafkaProperties { kafka.set(k, v) }
        for (k, v) in settings.kafkaProperties where KafkaConfiguration.isSecret(k) { Secrets.register(v) }
        do {
            try KafkaTopicReader.forEach(topic: topic, configuration: kafka) { m in
                let key = m.key.map { String(decoding: $0, as: UTF8.self) } ?? "<null>"
                let headers = m.headers.map { "\($0.name)=\($0.value.map { String(decoding: $0, as: UTF8.self) } ?? "<null>")" }
                let time = timestamps ? " timestamp=\(m.timestampMillis)" : ""
                var line = "topic=\(m.topic) partition=\(m.partition) offset=\(m.offset)\(time) key=\(key) headers={\(headers.joined(separator: ", "))}"
                if values { line += " value=\(m.value.map { String(decoding: $0, as: UTF8.self) } ?? "<tombstone>")" }
                print(line)
            }
        } catch {
            fail(Redaction.redact("\(error)"))
        }
    }
}
