import Foundation
import Kafka
import OutboxRelay
import PGClient
import Testing

@Suite(.serialized) struct MessageShapeTests {
    @Test func optionalHeadersAndTraceContextPassThrough() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        var config = TestEnvironment.configuration(table: table)
        config.replicaName = "shape-relay"
        config.shape.createdAtHeader = "outbox-created-at"
        config.shape.relayHeader = "outbox-relay"
        config.shape.cloudEventsSource = "urn:orders-service"
        let relay = try await RunningRelay.start(config)
        let conn = try TestEnvironment.connect()
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let plain = try conn.query("INSERT INTO \(table.sql) (topic, key, value, headers) VALUES ($1, 'k', 'v', $2::text::jsonb) RETURNING id", [
            .text(topic), .text(#"{"traceparent": "\#(trace)", "tracestate": "vendor=1"}"#),
        ]).int64(0, 0)
        let typed = try conn.query("INSERT INTO \(table.sql) (topic, key, value, headers) VALUES ($1, 'k2', 'v', '{\"ce_type\": \"OrderPaid\"}') RETURNING id", [
            .text(topic),
        ]).int64(0, 0)
        try await TestEnvironment.eventually("drained") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        let v = try Verification.verify(topics: [topic], expectedIds: [plain, typed])
        let m = try #require(v.messagesById[plain])
        #expect(m.header("traceparent") == trace)
        #expect(m.header("tracestate") == "vendor=1")
        #expect(m.header("outbox-relay") == "shape-relay")
        #expect(m.header("outbox-created-at")?.hasSuffix("Z") == true)
        #expect(m.header("ce_specversion") == "1.0")
        #expect(m.header("ce_id") == String(plain))
        #expect(m.header("ce_source") == "urn:orders-service")
        #expect(m.header("ce_type") == topic)
        #expect(m.header("ce_time") == m.header("outbox-created-at"))
        let t = try #require(v.messagesById[typed])
        #expect(t.header("ce_type") == "OrderPaid", "the row's own ce_type wins")
        #expect(t.headers.filter { $0.name == "ce_type" }.count == 1)
    }

    @Test func aDelayedRowIsRelayedAtItsTimeAndHoldsBackItsKeyOnly() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let relay = try await RunningRelay.start(TestEnvironment.configuration(table: table))
        let conn = try TestEnvironment.connect()
        let notBefore = try conn.query("SELECT (extract(epoch from clock_timestamp() + interval '4 seconds') * 1000)::bigint").int64(0, 0)
        let delayed = try conn.query("""
            INSERT INTO \(table.sql) (topic, key, value, not_before) VALUES ($1, 'late-key', 'delayed', to_timestamp($2::bigint / 1000.0)) RETURNING id
            """, [.text(topic), .int8(notBefore)]).int64(0, 0)
        let sameKey = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'late-key', 'after') RETURNING id", [.text(topic)]).int64(0, 0)
        let otherKey = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'other', 'now') RETURNING id", [.text(topic)]).int64(0, 0)
        try await TestEnvironment.eventually("the other key flows at once") {
            try conn.query("SELECT count(*) FROM \(table.sql) WHERE id = $1", [.int8(otherKey)]).int64(0, 0) == 0
        }
        // Checked together with the database clock: on a starved machine the other key can take
        // longer than the delay, and then the delayed rows may rightly be gone.
        let check = try conn.query(
            "SELECT count(*), (extract(epoch from clock_timestamp()) * 1000)::bigint FROM \(table.sql) WHERE id = ANY($1::bigint[])",
            [.int8Array([delayed, sameKey])])
        let waiting = try check.int64(0, 0), checkedAt = try check.int64(0, 1)
        #expect(waiting == 2 || checkedAt >= notBefore,
                "the delayed row and the later row of its key wait until not_before (\(waiting) of 2 left, \(notBefore - checkedAt) ms before it)")
        try await TestEnvironment.eventually("drained") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        let v = try Verification.verify(topics: [topic], expectedIds: [delayed, sameKey, otherKey])
        #expect(v.lost.count == 0 && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
        let d = try #require(v.messagesById[delayed])
        #expect(d.timestampMillis >= notBefore, "produced at or after not_before")
    }
}
