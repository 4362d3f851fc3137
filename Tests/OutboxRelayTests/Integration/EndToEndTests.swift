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

    /// A backlog is read a page ahead: the next claim runs while the previous page is produced.
    /// Its rows still go out after the previous page's, so per-key order holds across pages.
    @Test func aBacklogIsReadAPageAheadInOrder() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let conn = try TestEnvironment.connect()
        // 20 000 rows over 100 keys, so every page holds rows of every key.
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || (i % 100), 'UTF8'), convert_to('v' || i, 'UTF8') FROM generate_series(1, 20000) AS i", [.text(topic)])
        var config = TestEnvironment.configuration(table: table)
        config.maxInFlightRows = 5000
        let relay = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("backlog drained") { try TestEnvironment.count(table) == 0 }
        let stats = await relay.relay.statistics()
        try await relay.stop()
        #expect(stats.prefetchedClaims > 0, "no claim was started ahead: \(stats.claims) claims")
        let v = try Verification.verify(topics: [topic], expectedIds: Set(1...20_000))
        #expect(v.lost.isEmpty && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
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

    /// The relay's sessions never JIT-compile a statement. On a server with `jit = on` (the
    /// default where PostgreSQL is built with LLVM) a statement whose only plan is a disabled
    /// sequential scan is costed far above `jit_above_cost`; each compilation took 10–110 ms,
    /// most of a drain's start-up. The connection here lowers the JIT thresholds to 0, so every
    /// statement of a session that did not turn JIT off would be compiled.
    @Test func theRelaysStatementsAreNeverJITCompiled() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let admin = try TestEnvironment.connect()
        // The check below can only fail on a server that can JIT-compile at all.
        #expect(try admin.query("SELECT pg_jit_available()::text").string(0, 0) == "true", "this PostgreSQL cannot JIT-compile: the test cannot fail")
        try admin.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        let base = TestEnvironment.databaseURL
        let jitEverything = "options=" + "-c jit=on -c jit_above_cost=0 -c jit_inline_above_cost=0 -c jit_optimize_above_cost=0"
            .addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let url = base + (base.contains("?") ? "&" : "?") + jitEverything
        // The same connection options do compile a statement when the session leaves JIT on.
        let probe = try PGConnection(url: url, applicationName: "outbox-relay-tests")
        let plan = try probe.query("EXPLAIN (ANALYZE, FORMAT JSON) SELECT shard_count FROM \(table.metaSQL)").string(0, 0) ?? ""
        #expect(plan.contains("\"JIT\""), "the probe's statement was not JIT-compiled: \(plan)")

        try admin.query("INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || (i % 50), 'UTF8'), 'v' FROM generate_series(1, 3000) AS i", [.text(topic)])
        var config = TestEnvironment.configuration(table: table)
        config.databaseURL = url
        let relay = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("the backlog relayed") { try TestEnvironment.count(table) == 0 }
        try admin.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'late', 'v')", [.text(topic)])
        try await TestEnvironment.eventually("a later row relayed") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        // The probe's EXPLAIN is the only statement here that may have been compiled.
        let stats = try admin.query("""
            SELECT count(*), coalesce(sum(jit_functions), 0)::bigint FROM pg_stat_statements
            WHERE query LIKE '%' || $1 || '%' AND query NOT LIKE 'EXPLAIN%' AND query NOT LIKE 'INSERT INTO%'
            """, [.text(table.name)])
        let statements = try stats.int64(0, 0), compiled = try stats.int64(0, 1)
        #expect(statements >= 3, "the relay's statements on the table were not found")
        #expect(compiled == 0, "relay statements were JIT-compiled: \(compiled) functions")
        let v = try Verification.verify(topics: [topic], expectedIds: Set(1...3001))
        #expect(v.lost.isEmpty && v.duplicates == 0, "\(v)")
    }
}
