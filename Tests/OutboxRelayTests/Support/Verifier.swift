import Foundation
import Kafka
import OutboxRelay

/// Checks the relay's promise by reading every partition from the start and counting ids
/// (the `outbox-id` header), never offsets.
struct Verification: CustomStringConvertible {
    var seen: [Int64: Int] = [:]
    var lost: [Int64] = []
    var duplicates = 0
    /// Same-key pairs whose first occurrences are out of id order within their partition.
    var orderInversions = 0
    var messagesById: [Int64: ConsumedMessage] = [:]
    var keyPartitions: [String: Set<Int32>] = [:]
    var inversionSamples: [String] = []

    var description: String {
        "lost \(lost.count) (first: \(lost.prefix(5))), duplicates \(duplicates), order inversions \(orderInversions) \(inversionSamples.prefix(5)), distinct \(seen.count)"
    }

    /// Reads every partition of `topics` from the start (on `configuration`'s cluster) and verifies.
    static func verify(topics: [String], expectedIds: Set<Int64>,
                       configuration: KafkaConfiguration = TestEnvironment.kafka) throws -> Verification {
        var messages: [ConsumedMessage] = []
        for topic in topics {
            messages += try KafkaTopicReader.readAll(topic: topic, configuration: configuration, timeoutMilliseconds: 60_000)
        }
        return verify(messages: messages, expectedIds: expectedIds)
    }

    /// Counts ids (never offsets): per topic and partition, a key's first occurrences must ascend.
    static func verify(messages: [ConsumedMessage], expectedIds: Set<Int64>) -> Verification {
        var v = Verification()
        var lastByKey: [String: Int64] = [:]
        var lastWhere: [String: String] = [:]
        var firstSeen = Set<Int64>()
        for m in messages.sorted(by: { ($0.topic, $0.partition, $0.offset) < ($1.topic, $1.partition, $1.offset) }) {
            guard let idText = m.header(ClaimedRow.idHeader), let id = Int64(idText) else { continue }
            v.seen[id, default: 0] += 1
            v.messagesById[id] = v.messagesById[id] ?? m
            guard firstSeen.insert(id).inserted else { continue }
            if let key = m.key.map({ String(decoding: $0, as: UTF8.self) }) {
                v.keyPartitions[key, default: []].insert(m.partition)
                let slot = "\(m.topic)/\(m.partition)/\(key)"
                if let last = lastByKey[slot], last > id {
                    v.orderInversions += 1
                    if v.inversionSamples.count < 10 { v.inversionSamples.append("\(slot): \(id) at offset \(m.offset)\(m.header("sent-by").map { " by " + $0 } ?? "") after \(last) (\(lastWhere[slot] ?? ""))") }
                }
                if id > (lastByKey[slot] ?? .min) { lastWhere[slot] = "offset \(m.offset)\(m.header("sent-by").map { " by " + $0 } ?? "")" }
                lastByKey[slot] = max(lastByKey[slot] ?? id, id)
            }
        }
        v.duplicates = v.seen.values.reduce(0) { $0 + ($1 - 1) }
        v.lost = expectedIds.filter { v.seen[$0] == nil }.sorted()
        return v
    }
}
