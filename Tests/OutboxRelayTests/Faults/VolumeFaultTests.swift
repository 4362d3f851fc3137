import Foundation
import Kafka
import OutboxRelay
import PGClient
import Testing

/// The ids a `RETURNING id` (or `SELECT id`) result holds.
func ids(_ r: PGResult) throws -> Set<Int64> {
    var out = Set<Int64>()
    for i in 0..<r.rowCount { out.insert(try r.int64(i, 0)) }
    return out
}

/// Faults at volume (issue 15): an application holding the outbox locked, poison rows mixed into
/// a drain, and a hot key with a poison row at its head.
@Suite(.serialized) struct VolumeFaultTests {
    /// An application holds ACCESS EXCLUSIVE on the outbox for 3 s mid-drain: every claim and
    /// DELETE times out (lock_timeout = statement_timeout = 1 s); the relay backs off, loses
    /// nothing, and drains once the lock is gone.
    @Test func anApplicationLockingTheOutboxCostsOnlyTime() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let conn = try TestEnvironment.connect()
        var inserted = try ids(conn.query("""
            INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || (i % 200), 'UTF8'), 'v'
            FROM generate_series(1, 30000) i RETURNING id
            """, [.text(topic)]))
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description))
        try await TestEnvironment.eventually("progress") { try TestEnvironment.count(table) < 30_000 }
        let locker = try TestEnvironment.connect()
        try locker.executeScript("BEGIN; LOCK TABLE \(table.sql) IN ACCESS EXCLUSIVE MODE")
        try await Task.sleep(nanoseconds: 3_000_000_000)  // the fault's duration, not a synchronisation
        // Rows written while locked wait in the application's transaction, committed with the unlock.
        inserted.formUnion(try ids(locker.query("INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || (i % 200), 'UTF8'), 'w' FROM generate_series(1, 500) i RETURNING id",
                                                [.text(topic)])))
        try locker.executeScript("COMMIT")
        let unlocked = Date()
        try await TestEnvironment.eventually("drained after the lock", timeout: 60) { try TestEnvironment.count(table) == 0 }
        let recovery = Date().timeIntervalSince(unlocked)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: inserted)
        let left = try leftovers(table)
        FaultReport("application holds ACCESS EXCLUSIVE on the outbox 3 s mid-drain (lock/statement timeout 1 s)",
                    bound: "lost 0, duplicates <= in-flight window (2000), order inversions 0", inserted: inserted.count, verification: v,
                    pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: recovery,
                    note: "recovery = unlock to backlog 0; claims and DELETEs time out with 55P03 and are retried with back-off").write()
        #expect(v.lost.isEmpty, "\(v)")
        #expect(v.duplicates <= 2_000, "\(v)")
        #expect(v.orderInversions == 0, "\(v)")
    }

    /// 10 % of a 20 000-row drain is over the producer's size limit: exactly those are
    /// dead-lettered (refused synchronously, so at once and exactly), every other row flows in
    /// order.
    @Test func tenPercentPoisonRowsInADrain() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let conn = try TestEnvironment.connect()
        let all = try ids(conn.query("""
            INSERT INTO \(table.sql) (topic, key, value)
            SELECT $1, convert_to('k' || (i % 500), 'UTF8'),
                   CASE WHEN i % 10 = 0 THEN convert_to(repeat('x', 20000), 'UTF8') ELSE convert_to('v' || i, 'UTF8') END
            FROM generate_series(1, 20000) i RETURNING id
            """, [.text(topic)]))
        let poison = try ids(conn.query("SELECT id FROM \(table.sql) WHERE length(value) = 20000"))
        let started = Date()
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description, extra: ["--kafka-property", "message.max.bytes=10000"]))
        try await TestEnvironment.eventually("drained", timeout: 120) { try TestEnvironment.count(table) == 0 }
        let elapsed = Date().timeIntervalSince(started)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: all.subtracting(poison))
        let left = try leftovers(table)
        let deadIds = try ids(conn.query("SELECT id FROM \(table.deadLetterSQL)"))
        FaultReport("10 % of a 20 000-row drain over message.max.bytes (poison mixed in)",
                    bound: "exactly the poison rows dead-lettered; lost 0, duplicates 0, order inversions 0", inserted: all.count,
                    verification: v, pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: elapsed,
                    note: "recovery = relay start to backlog 0 (20 000 rows, 2 000 dead letters)").write()
        #expect(deadIds == poison, "dead-lettered exactly the poison rows")
        #expect(v.lost.isEmpty && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
    }

    /// A key with 10 000 rows whose first row is poison (an invalid topic name, refused by the
    /// broker): that key waits until the poison row is dead-lettered, other keys flow meanwhile,
    /// and the key's rows then follow in order.
    @Test func aHotKeyWithAPoisonRowAtItsHead() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let conn = try TestEnvironment.connect()
        let poisonId = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ('bad topic name!', 'hot', 'p') RETURNING id").int64(0, 0)
        let hot = try ids(conn.query("""
            INSERT INTO \(table.sql) (topic, key, value) SELECT $1, 'hot', convert_to('h' || i, 'UTF8') FROM generate_series(1, 10000) i RETURNING id
            """, [.text(topic)]))
        let others = try ids(conn.query("""
            INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('o' || (i % 100), 'UTF8'), 'o' FROM generate_series(1, 5000) i RETURNING id
            """, [.text(topic)]))
        let started = Date()
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description))
        try await TestEnvironment.eventually("drained", timeout: 120) { try TestEnvironment.count(table) == 0 }
        let elapsed = Date().timeIntervalSince(started)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: hot.union(others))
        let left = try leftovers(table)
        let dead = try ids(conn.query("SELECT id FROM \(table.deadLetterSQL)"))
        FaultReport("a key with 10 000 rows and a poison row (invalid topic) at its head, 5 000 rows of other keys",
                    bound: "only the poison row dead-lettered; the key's rows follow in order; lost 0, duplicates 0", inserted: 15_001,
                    verification: v, pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: elapsed,
                    note: "recovery = relay start to backlog 0").write()
        #expect(dead == [poisonId])
        #expect(v.lost.isEmpty && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
    }
}

@Suite(.serialized) struct ResourceFaultTests {
    func peakRSSMiB(_ pid: Int32) -> Double? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kb / 1024
    }

    /// A backlog of 300 rows of 900 KB each (270 MB): the in-flight window (16 MiB by default)
    /// bounds the relay's memory, not the backlog.
    @Test func memoryIsBoundedByTheWindowNotABacklogOfLargeRows() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let conn = try TestEnvironment.connect()
        let all = try ids(conn.query("""
            INSERT INTO \(table.sql) (topic, key, value)
            SELECT $1, convert_to('k' || (i % 20), 'UTF8'), convert_to(repeat(chr(65 + i % 26), 900000), 'UTF8')
            FROM generate_series(1, 300) i RETURNING id
            """, [.text(topic)]))
        let started = Date()
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description))
        try await TestEnvironment.eventually("drained", timeout: 120) { try TestEnvironment.count(table) == 0 }
        let elapsed = Date().timeIntervalSince(started)
        let rss = peakRSSMiB(relay.pid)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: all)
        let left = try leftovers(table)
        FaultReport("backlog of 300 rows of 900 KB (270 MB) with a 16 MiB in-flight window",
                    bound: "relay peak RSS < 160 MiB; lost 0, duplicates 0, order inversions 0", inserted: all.count, verification: v,
                    pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: elapsed,
                    note: "relay peak RSS \(rss.map { String(format: "%.0f", $0) } ?? "?") MiB; recovery = relay start to backlog 0").write()
        #expect(rss.map { $0 < 160 } ?? false, "peak RSS \(rss ?? -1) MiB")
        #expect(v.lost.isEmpty && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
    }

    /// The relay's role reaches its connection limit while reconnecting (backends terminated,
    /// CONNECTION LIMIT 0): every reconnect is refused with 53300; once the limit is lifted the
    /// relay reconnects and drains, losing nothing.
    @Test func connectionLimitReachedWhileReconnecting() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let admin = try TestEnvironment.connect()
        let role = "relay_\(UUID().uuidString.prefix(8).lowercased())"
        try admin.executeScript("""
            CREATE ROLE \(role) LOGIN;
            GRANT USAGE ON SCHEMA public TO \(role);
            GRANT SELECT, UPDATE, DELETE ON \(table.sql) TO \(role);
            GRANT UPDATE ON SEQUENCE \(table.notifyUntilSQL) TO \(role);
            GRANT SELECT, INSERT ON \(table.deadLetterSQL) TO \(role);
            GRANT SELECT, UPDATE ON \(table.leasesSQL) TO \(role);
            GRANT SELECT, INSERT, UPDATE, DELETE ON \(table.replicasSQL) TO \(role);
            GRANT SELECT ON \(table.metaSQL) TO \(role);
            """)
        defer { try? admin.executeScript("DROP OWNED BY \(role); DROP ROLE IF EXISTS \(role)") }
        var all = try ids(admin.query("""
            INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || (i % 100), 'UTF8'), 'v' FROM generate_series(1, 20000) i RETURNING id
            """, [.text(topic)]))
        var args = RelayProcess.runArguments(table: table.description)
        args[args.firstIndex(of: "--database-url")! + 1] = TestEnvironment.databaseURL.replacingOccurrences(of: "postgres@", with: "\(role)@")
        let relay = try RelayProcess(args)
        try await TestEnvironment.eventually("progress") { try TestEnvironment.count(table) < 20_000 }
        try admin.executeScript("ALTER ROLE \(role) CONNECTION LIMIT 0")
        _ = try admin.query("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1", [.text(role)])
        all.formUnion(try ids(admin.query("""
            INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || (i % 100), 'UTF8'), 'w' FROM generate_series(1, 1000) i RETURNING id
            """, [.text(topic)])))
        try await TestEnvironment.eventually("the relay was refused by the limit") { relay.output.contains("53300") || relay.output.contains("too many connections") }
        try admin.executeScript("ALTER ROLE \(role) CONNECTION LIMIT -1")
        let lifted = Date()
        try await TestEnvironment.eventually("drained after the limit was lifted", timeout: 60) { try TestEnvironment.count(table) == 0 }
        let recovery = Date().timeIntervalSince(lifted)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: all)
        let left = try leftovers(table)
        FaultReport("relay's role at its connection limit while reconnecting (backends terminated, CONNECTION LIMIT 0), then lifted",
                    bound: "lost 0, duplicates <= in-flight window (2000), order inversions 0", inserted: all.count, verification: v,
                    pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: recovery,
                    note: "recovery = limit lifted to backlog 0; reconnects refused with SQLSTATE 53300 meanwhile").write()
        #expect(v.lost.isEmpty && v.duplicates <= 2_000 && v.orderInversions == 0, "\(v)")
    }
}
