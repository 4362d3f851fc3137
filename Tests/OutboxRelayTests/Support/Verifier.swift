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
    /// Where each message was read → its outbox id.
    var idAtPlace: [DeliveryPlace: Int64] = [:]
    /// Per "topic[partition]": offsets read, to find holes.
    var offsetsRead: [String: [Int64]] = [:]

    var description: String {
        "lost \(lost.count) (first: \(lost.prefix(5))), duplicates \(duplicates), order inversions \(orderInversions) \(inversionSamples.prefix(5)), distinct \(seen.count)"
            + (lateStarts.isEmpty ? "" : ", partitions read from past offset 0: \(lateStarts)")
    }

    /// Partitions whose first message read was not at offset 0 (a reader that started late
    /// reports the partition's first messages as lost; see `KafkaTopicReader`).
    var lateStarts: [String] {
        offsetsRead.compactMap { partition, offsets in
            offsets.min().flatMap { $0 > 0 ? "\(partition)@\($0)" : nil }
        }.sorted()
    }

    /// For a loss: where each relay was told the lost rows landed, what the topic holds there, and
    /// the holes in each partition's offsets. Tells a broker/reader fault (acknowledged, then absent)
    /// from a relay fault (never acknowledged, yet deleted).
    func explainLosses(ledgers: [(relay: String, ledger: [Int64: DeliveryPlace])], limit: Int = 10) -> String {
        var lines: [String] = []
        for id in lost.prefix(limit) {
            let acks = ledgers.compactMap { l in l.ledger[id].map { "acked to \(l.relay) at \($0) (read there: \(idAtPlace[$0].map(String.init) ?? "nothing"))" } }
            lines.append("id \(id): " + (acks.isEmpty ? "no relay was told it was delivered" : acks.joined(separator: "; ")))
        }
        for (partition, offsets) in offsetsRead.sorted(by: { $0.key < $1.key }) {
            let sorted = offsets.sorted()
            var holes: [String] = []
            var expected = sorted.first ?? 0
            for o in sorted {
                if o > expected { holes.append(expected == o - 1 ? "\(expected)" : "\(expected)...\(o - 1)") }
                expected = max(expected, o + 1)
            }
            if !holes.isEmpty || sorted.first.map({ $0 != 0 }) == true {
                lines.append("\(partition): \(sorted.count) read, first offset \(sorted.first ?? -1), holes \(holes.prefix(10))")
            }
        }
        return lines.joined(separator: "\n")
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
        func sender(_ m: ConsumedMessage) -> String { m.header("sent-by").map { " by " + $0 } ?? "" }
        var firstSeen = Set<Int64>()
        for m in messages.sorted(by: { ($0.topic, $0.partition, $0.offset) < ($1.topic, $1.partition, $1.offset) }) {
            v.offsetsRead["\(m.topic)[\(m.partition)]", default: []].append(m.offset)
            guard let idText = m.header(ClaimedRow.idHeader), let id = Int64(idText) else { continue }
            v.idAtPlace[DeliveryPlace(topic: m.topic, partition: m.partition, offset: m.offset)] = id
            v.seen[id, default: 0] += 1
            v.messagesById[id] = v.messagesById[id] ?? m
            guard firstSeen.insert(id).inserted else { continue }
            if let key = m.key.map({ String(decoding: $0, as: UTF8.self) }) {
                v.keyPartitions[key, default: []].insert(m.partition)
                let slot = "\(m.topic)/\(m.partition)/\(key)"
                if let last = lastByKey[slot], last > id {
                    v.orderInversions += 1
                    if v.inversionSamples.count < 10 { v.inversionSamples.append("\(slot): \(id) at offset \(m.offset)\(sender(m)) after \(last) (\(lastWhere[slot] ?? ""))") }
                }
                if id > (lastByKey[slot] ?? .min) { lastWhere[slot] = "offset \(m.offset)\(sender(m))" }
                lastByKey[slot] = max(lastByKey[slot] ?? id, id)
            }
        }
        v.duplicates = v.seen.values.reduce(0) { $0 + ($1 - 1) }
        v.lost = expectedIds.filter { v.seen[$0] == nil }.sorted()
        return v
    }
}
