import CKafka
import Foundation

/// A message read back from a topic.
public struct ConsumedMessage: Sendable {
    public let topic: String
    public let partition: Int32
    public let offset: Int64
    public let key: [UInt8]?
    public let value: [UInt8]?
    public let headers: [(name: String, value: [UInt8]?)]
    /// Message timestamp in milliseconds since the epoch (CreateTime: when it was produced).
    public var timestampMillis: Int64 = -1

    /// The first header named `name`, as UTF-8 text.
    public func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value.map { String(decoding: $0, as: UTF8.self) }
    }
}

/// Reads every partition of a topic from the beginning to its current end, without a consumer
/// group (manual assignment). Used by the verifier in tests, the demo and `outbox-relay tail`.
public enum KafkaTopicReader {
    public static func readAll(topic: String, configuration: KafkaConfiguration,
                               timeoutMilliseconds: Int = 30_000) throws(KafkaError) -> [ConsumedMessage] {
        var out: [ConsumedMessage] = []
        try forEach(topic: topic, configuration: configuration, timeoutMilliseconds: timeoutMilliseconds) { out.append($0) }
        return out
    }

    /// Streams every message of `topic` from offset 0 to the current end of each partition to
    /// `body`, one at a time (memory does not grow with the topic). Partitions interleave; each
    /// partition's messages come in offset order.
    public static func forEach(topic: String, configuration: KafkaConfiguration, timeoutMilliseconds: Int = 30_000,
                               _ body: (ConsumedMessage) -> Void) throws(KafkaError) {
        var config = configuration
        config.set("group.id", "outbox-relay-reader-\(UUID().uuidString)")
        config.set("enable.auto.commit", "false")
        config.set("enable.partition.eof", "true")
        config.set("auto.offset.reset", "earliest")
        let rk = try KafkaAdmin.makeClient(config, type: RD_KAFKA_CONSUMER)
        defer {
            rd_kafka_consumer_close(rk)
            rd_kafka_destroy(rk)
        }
        rd_kafka_poll_set_consumer(rk)
        let partitions = try KafkaAdmin.partitionCount(rk, topic, 10_000)
        let list = rd_kafka_topic_partition_list_new(partitions)!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        // Offset 0, not OFFSET_BEGINNING: Tansu 0.6.0 answers ListOffsets(earliest) with the
        // batch *written* first (least last-modified), and concurrent producers can write a later
        // offset's batch before the one at offset 0 (offsets are reserved before the write); the
        // reader then started past the partition's first messages and they looked lost. Where
        // offset 0 is gone (retention), `auto.offset.reset=earliest` moves the read to the start.
        for p in 0..<partitions {
            let tp = rd_kafka_topic_partition_list_add(list, topic, p)!
            tp.pointee.offset = 0
        }
        let err = rd_kafka_assign(rk, list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(.consume, err) }

        var done = Set<Int32>()
        let deadline = Date().addingTimeInterval(Double(timeoutMilliseconds) / 1000)
        while done.count < Int(partitions) {
            if Date() > deadline {
                throw KafkaError(.consume, message: "timed out reading \(topic): \(done.count)/\(partitions) partitions at end")
            }
            guard let m = rd_kafka_consumer_poll(rk, 200) else { continue }
            defer { rd_kafka_message_destroy(m) }
            let msg = m.pointee
            if msg.err == RD_KAFKA_RESP_ERR__PARTITION_EOF { done.insert(msg.partition); continue }
            if msg.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                throw KafkaError(.consume, msg.err)
            }
            let key = msg.key.map { Array(UnsafeRawBufferPointer(start: $0, count: msg.key_len)) }
            let value = msg.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: msg.len)) }
            var headers: [(String, [UInt8]?)] = []
            var hdrs: OpaquePointer?
            if rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs {
                var i = 0
                var name: UnsafePointer<CChar>?
                var val: UnsafeRawPointer?
                var size = 0
                while rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                    headers.append((String(cString: name!), val.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) }))
                    i += 1
                }
            }
            var consumed = ConsumedMessage(topic: topic, partition: msg.partition, offset: msg.offset,
                                           key: key, value: value, headers: headers)
            consumed.timestampMillis = rd_kafka_message_timestamp(m, nil)
            body(consumed)
        }
    }
}
