import Foundation
@_spi(Testing) import Kafka
import Testing

/// The produce → acknowledgement histogram (`outbox_relay_produce_to_ack_seconds`).
struct AckLatencyTests {
    @Test func bucketsAreCumulativeAndRenderedAsAPrometheusHistogram() {
        let a = AckLatency()
        for micros: Int64 in [50, 100, 101, 9_000, 90_000_000, -1] { a.record(micros: micros) }
        let s = a.snapshot()
        let at = { (bound: Int64) in s.cumulative[AckLatency.boundsMicros.firstIndex(of: bound)!] }
        #expect(s.count == 5, "a negative latency (librdkafka's 'not available') is not counted")
        #expect(s.sumMicros == 90_009_251)
        #expect(at(100) == 2, "a bucket's bound is inclusive")
        #expect(at(200) == 3)
        #expect(at(10_000) == 4)
        #expect(at(60_000_000) == 4, "90 s is above every bound")
        let text = a.prometheusText(name: "x_seconds", help: "h", labels: "table=\"t\"")
        for line in ["# TYPE x_seconds histogram", "x_seconds_bucket{table=\"t\",le=\"0.0001\"} 2",
                     "x_seconds_bucket{table=\"t\",le=\"0.01\"} 4", "x_seconds_bucket{table=\"t\",le=\"2.5\"} 4",
                     "x_seconds_bucket{table=\"t\",le=\"+Inf\"} 5", "x_seconds_sum{table=\"t\"} 90.009251",
                     "x_seconds_count{table=\"t\"} 5"] {
            #expect(text.split(separator: "\n").contains(Substring(line)), "missing \(line)")
        }
    }

    /// A table's name goes into the histogram's label: backslash, quote and line feed escaped as
    /// the text format requires, so no name can break `/metrics`.
    @Test func aLabelValueIsEscaped() {
        #expect(AckLatency.labelValue("public.outbox") == "public.outbox")
        #expect(AckLatency.labelValue("a\\b\"c\nd") == "a\\\\b\\\"c\\nd")
        #expect(AckLatency.labelValue("x\r\ny") == "x\r\\ny", "a CR LF's line feed too")
    }

    /// The latency is taken when librdkafka handles the acknowledgement, not when the owner takes
    /// the report: the relay takes reports at the end of its next wait, a claim cycle later.
    @Test func theBrokersRoundTripIsTimedWhenTheAcknowledgementComes() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        let topic = "ack-\(UUID().uuidString.prefix(8).lowercased())"
        try cluster.createTopic(topic, partitions: 2)
        let latency = AckLatency()
        let producer = try KafkaProducer(configuration: KafkaConfiguration([
            ("bootstrap.servers", cluster.bootstrapServers), ("enable.idempotence", "true"), ("linger.ms", "0"),
        ]), ackLatency: latency) {}
        defer { producer.close() }
        func produce(_ n: Int, from first: Int) throws {
            for i in first..<(first + n) {
                try producer.produce(KafkaMessage(topic: topic, key: Array("k\(i)".utf8), value: Array("v\(i)".utf8)),
                                     opaque: UInt64(i))
            }
        }
        func reports() async throws -> Int {
            var delivered = 0
            _ = try await TestEnvironment.eventually("reports taken") {
                for case .deliveryReports(let r) in producer.takeEvents() { delivered += r.filter(\.isDelivered).count }
                return delivered > 0
            }
            return delivered
        }

        let upTo25ms = { (s: AckLatency.Snapshot) in s.cumulative[AckLatency.boundsMicros.firstIndex(of: 25_000)!] }
        // The first messages wait for the connection and the producer id too.
        try produce(10, from: 1)
        #expect(try await TestEnvironment.eventually("10 acknowledgements timed") { latency.snapshot().count == 10 })
        var delivered = try await reports()

        // A fast broker: within 25 ms.
        let warm = latency.snapshot()
        try produce(10, from: 11)
        #expect(try await TestEnvironment.eventually("20 acknowledgements timed") { latency.snapshot().count == 20 })
        let fast = latency.snapshot()
        #expect(upTo25ms(fast) - upTo25ms(warm) == 10)

        // Every response 40 ms late: counted before any report is taken, and none within 25 ms.
        cluster.setBrokerRoundTrip(40)
        try produce(20, from: 21)
        #expect(try await TestEnvironment.eventually("40 acknowledgements timed") { latency.snapshot().count == 40 })
        let slow = latency.snapshot()
        #expect(upTo25ms(slow) == upTo25ms(fast), "the slow broker's acknowledgements all took over 25 ms")
        #expect(slow.sumMicros - fast.sumMicros >= 20 * 40_000)
        while delivered < 40 { delivered += try await reports() }
        #expect(delivered == 40)
        #expect(latency.snapshot().count == 40, "each acknowledgement counted once")
    }
    /// commit → ack dates each row by its own acknowledgement, kept by the message's opaque as
    /// librdkafka handles it: not by when the report is taken, and never another message's.
    @Test func eachAcknowledgementsTimeIsKeptByItsOpaque() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        let topic = "acktime-\(UUID().uuidString.prefix(8).lowercased())"
        try cluster.createTopic(topic, partitions: 2)
        let latency = AckLatency(keepingTimesOf: 1)  // 1 024 slots, the least
        let producer = try KafkaProducer(configuration: KafkaConfiguration([("bootstrap.servers", cluster.bootstrapServers)]),
                                         ackLatency: latency) {}
        defer { producer.close() }
        let nowMicros = { Int64(Date().timeIntervalSince1970 * 1_000_000) }
        func produce(_ opaques: [UInt64]) throws {
            for o in opaques { try producer.produce(KafkaMessage(topic: topic, key: Array("k\(o)".utf8), value: [1]), opaque: o) }
        }

        cluster.setBrokerRoundTrip(40)
        let before = nowMicros()
        try produce(Array(1...20))
        #expect(try await TestEnvironment.eventually("20 acknowledgements") { latency.snapshot().count == 20 })
        let acknowledged = nowMicros()
        for o: UInt64 in 1...20 {
            let at = try #require(latency.acknowledgedAtMicros(opaque: o), "message \(o) has its time")
            #expect(at >= before + 40_000 && at <= acknowledged, "message \(o) dated \(at), outside [\(before + 40_000), \(acknowledged)]")
        }
        #expect(latency.acknowledgedAtMicros(opaque: 21) == nil, "a message never produced has none")
        #expect(latency.acknowledgedAtMicros(opaque: 0) == nil)

        // 1 025 shares message 1's slot: once it is acknowledged, message 1 has no time rather
        // than 1 025's.
        try produce([1_025])
        #expect(try await TestEnvironment.eventually("the 21st acknowledgement") { latency.snapshot().count == 21 })
        #expect(latency.acknowledgedAtMicros(opaque: 1_025) != nil)
        #expect(latency.acknowledgedAtMicros(opaque: 1) == nil)
        #expect(latency.acknowledgedAtMicros(opaque: 2) != nil, "the other slots keep theirs")

        // Without keeping times: none.
        #expect(AckLatency().acknowledgedAtMicros(opaque: 1) == nil)
    }

    /// The benchmark's per-row acknowledgement log: one line per acknowledged message that names
    /// its outbox id, dated when the acknowledgement came.
    @Test func theAcknowledgementLogDatesEachRow() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        let topic = "acklog-\(UUID().uuidString.prefix(8).lowercased())"
        try cluster.createTopic(topic, partitions: 2)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("acklog-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let latency = AckLatency()
        try latency.openLog(path: path)
        let producer = try KafkaProducer(configuration: KafkaConfiguration([("bootstrap.servers", cluster.bootstrapServers)]),
                                         ackLatency: latency) {}
        let before = Date().timeIntervalSince1970 * 1_000_000
        for id in 101...105 {
            try producer.produce(KafkaMessage(topic: topic, key: nil, value: Array("v".utf8),
                                              headers: [("type", Array("x".utf8)), ("outbox-id", Array("\(id)".utf8))]),
                                 opaque: UInt64(id))
        }
        try producer.produce(KafkaMessage(topic: topic, key: nil, value: Array("no id".utf8)), opaque: 200)
        #expect(try await TestEnvironment.eventually("6 acknowledgements timed") { latency.snapshot().count == 6 })
        let after = Date().timeIntervalSince1970 * 1_000_000
        producer.close()  // writes the log
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        let parsed = lines.map { $0.split(separator: " ") }.map { (Int($0[0])!, Double($0[1])!) }
        #expect(parsed.map(\.0).sorted() == Array(101...105), "one line per row that names its id, none for the other")
        for (id, at) in parsed { #expect(at >= before && at <= after, "row \(id) dated \(at), outside [\(before), \(after)]") }
    }
}
