import Foundation
import Kafka
import OutboxRelay
import PGClient
import Testing

@Suite(.serialized) struct EndToEndTests {
    @Test func tenThousandRowsArriveExactlyOnceInKeyOrderWithHeadersAndTombstones() async throws {
        let table = try TestEnvironment.migratedTable()
        let topics = try TestEnvironment.topics(3)
        let relay = try await RunningRelay.start(TestEnvironment.configuration(table: table))
        // Insert while the relay runs, in 20 transactions of 500 rows: 3 topics, 500 keys,
        // every 50th row a tombstone, headers with the sequence number.
        let conn = try TestEnvironment.connect()
        for chunk in 0..<20 {
            try conn.query("""
                INSERT INTO \(table.sql) (topic, key, value, headers)
                SELECT ($1::text[])[1 + (i % 3)], convert_to('key-' || (i % 500), 'UTF8'),
                       CASE WHEN i % 50 = 0 THEN NULL ELSE convert_to('value-' || i, 'UTF8') END,
                       jsonb_build_object('seq', i::text, 'kind', 'test')
                FROM generate_series($2::int, $3::int) AS i
                """, [.text("{\(topics.joined(separator: ","))}"), .int4(Int32(chunk * 500)), .int4(Int32(chunk * 500 + 499))])
        }
        try await TestEnvironment.eventually("outbox drained") { try TestEnvironment.count(table) == 0 }
        let stats = await relay.relay.statistics()
        try await relay.stop()

        let ids = try idsInserted(conn, table: table)
        #expect(ids.count == 10_000)
        let v = try Verification.verify(topics: topics, expectedIds: Set(ids.keys))
        #expect(v.lost.count == 0, "\(v)")
        #expect(v.duplicates == 0, "\(v)")
        #expect(v.orderInversions == 0, "\(v)")
        #expect(v.keyPartitions.values.allSatisfy { $0.count == 1 }, "a key must stay in one partition")
        #expect(stats.delivered == 10_000)
        for (id, seq) in ids {
            guard let m = v.messagesById[id] else { continue }
            #expect(m.header("seq") == String(seq))
            #expect(m.header("kind") == "test")
            #expect(m.topic == topics[seq % 3], "row \(id) on the topic it named (rows of 3 topics alternate within each claim)")
            #expect(m.header(ClaimedRow.idHeader) == String(id))
            #expect(m.key.map { String(decoding: $0, as: UTF8.self) } == "key-\(seq % 500)")
            if seq % 50 == 0 {
                #expect(m.value == nil, "row \(id) is a tombstone")
            } else {
                #expect(m.value.map { String(decoding: $0, as: UTF8.self) } == "value-\(seq)")
            }
        }
    }

    /// id → sequence number, recorded by a trigger-free side table: the relay deleted the rows,
    /// so read them back from Kafka's headers instead and from the sequence's range.
    private func idsInserted(_ conn: PGConnection, table: OutboxTable) throws -> [Int64: Int] {
        // Rows were inserted in id order of generate_series within each transaction, and the
        // transactions ran one after another: id n ↔ seq n-1.
        let last = try conn.query("SELECT last_value FROM \(table.sequenceSQL)").int64(0, 0)
        var out: [Int64: Int] = [:]
        for id in 1...last { out[id] = Int(id - 1) }
        return out
    }

    @Test func aRowCommittedAfterHigherIdsWereRelayedIsStillRelayed() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let relay = try await RunningRelay.start(TestEnvironment.configuration(table: table))
        let slow = try TestEnvironment.connect()
        let fast = try TestEnvironment.connect()
        try slow.executeScript("BEGIN")
        let lateId = try slow.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'late', 'late') RETURNING id", [.text(topic)]).int64(0, 0)
        let laterId = try fast.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'early', 'early') RETURNING id", [.text(topic)]).int64(0, 0)
        #expect(laterId > lateId)
        try await TestEnvironment.eventually("the higher id relayed first") {
            try fast.query("SELECT count(*) FROM \(table.sql) WHERE id = $1", [.int8(laterId)]).int64(0, 0) == 0
        }
        try slow.executeScript("COMMIT")
        try await TestEnvironment.eventually("the late row relayed") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        let v = try Verification.verify(topics: [topic], expectedIds: [lateId, laterId])
        #expect(v.lost.count == 0, "\(v)")
        #expect(v.duplicates == 0)
    }

    @Test func anIdleRelayIsWokenByNotify() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        // Poll interval far longer than the wait below: only NOTIFY can deliver the row in time.
        var config = TestEnvironment.configuration(table: table, pollMillis: 600_000)
        config.heartbeatIntervalMillis = 1_000
        let relay = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("relay holds its shards and has claimed") {
            let s = await relay.relay.statistics()
            return s.shardsHeld == 256 && s.claims > 0
        }
        let claimsBefore = await relay.relay.statistics().claims
        // Let the relay settle into its idle wait (any claim after the acquisition is done).
        try await TestEnvironment.eventually("relay idle") {
            let c = await relay.relay.statistics().claims
            try await Task.sleep(nanoseconds: 100_000_000)
            return await relay.relay.statistics().claims == c
        }
        let conn = try TestEnvironment.connect()
        let id = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'wake', 'up') RETURNING id", [.text(topic)]).int64(0, 0)
        try await TestEnvironment.eventually("row relayed without a poll", timeout: 30) { try TestEnvironment.count(table) == 0 }
        let stats = await relay.relay.statistics()
        try await relay.stop()
        #expect(stats.claims > claimsBefore)
        let v = try Verification.verify(topics: [topic], expectedIds: [id])
        #expect(v.lost.count == 0)
    }
}
