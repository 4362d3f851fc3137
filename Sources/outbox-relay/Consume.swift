import ArgumentParser
import Foundation
import Kafka

struct Consume: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every message of a topic from the beginning (topic, partition, offset, key, headers).")

    @Option(name: .customLong("brokers"), help: "Kafka brokers [env: OUTBOX_BROKERS]") var brokers: String?
    @Option(name: .customLong("topic"), help: "Topic to read") var topic: String
    @Flag(name: .customLong("values"), help: "Also print values") var values = false

    func run() throws {
        guard let b = brokers ?? ProcessInfo.processInfo.environment["OUTBOX_BROKERS"] else {
            fail("missing --brokers (OUTBOX_BROKERS)")
        }
        do {
            let messages = try KafkaTopicReader.readAll(topic: topic, configuration: KafkaConfiguration([("bootstrap.servers", b)]))
            for m in messages.sorted(by: { ($0.partition, $0.offset) < ($1.partition, $1.offset) }) {
                let key = m.key.map { String(decoding: $0, as: UTF8.self) } ?? "<null>"
                let headers = m.headers.map { "\($0.name)=\($0.value.map { String(decoding: $0, as: UTF8.self) } ?? "<null>")" }
                var line = "topic=\(m.topic) partition=\(m.partition) offset=\(m.offset) key=\(key) headers={\(headers.joined(separator: ", "))}"
                if values { line += " value=\(m.value.map { String(decoding: $0, as: UTF8.self) } ?? "<tombstone>")" }
                print(line)
            }
        } catch {
            fail("\(error)")
        }
    }
}
