import Foundation
import OutboxRelay
import PGClient
import Synchronization
import Testing

/// The notification gate (issue 13): inserts NOTIFY only while a replica waits for notifications.
/// A NOTIFY takes a database-wide lock from pre-commit to the end of commit, so notifying on every
/// insert serialized the application's commits; a busy relay polls instead.
@Suite(.serialized) struct NotificationGateTests {
    @Test func anIdleRelayIsNotifiedAndABusyOneIsNot() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let config = TestEnvironment.notifiedConfiguration(table: table, pollMillis: 30_000)  // only a NOTIFY or a busy poll wakes it
        let notifications = Mutex(0)
        let payloads = Mutex<[String]>([])
        let listener = PGListener(url: TestEnvironment.databaseURL, applicationName: "gate-test", channels: [table.channel]) { n in
            if let n {
                notifications.withLock { $0 += 1 }
                payloads.withLock { $0.append(n.payload) }
            }
        }
        listener.start()
        defer { listener.stop() }
        let relay = try await RunningRelay.startWaitingForNotifications(config)
        let conn = try TestEnvironment.connect()

        // The relay holds every shard: it declares the gate even (a declaration made while it
        // held only some is made again at once), so notifications name no shard — nobody else
        // listens to be spared the wake-up.
        try await TestEnvironment.eventually("an even gate", timeout: 10) {
            let gate = try conn.query("SELECT last_value FROM \(table.notifyUntilSQL)").int64(0, 0)
            return gate > 0 && gate % 2 == 0
        }

        // Idle: one row is notified and relayed at once, though the poll timer is 30 s.
        let before = notifications.withLock { $0 }
        let started = Date()
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'idle', 'v')", [.text(topic)])
        try await TestEnvironment.eventually("the idle row relayed", timeout: 5) { try TestEnvironment.count(table) == 0 }
        #expect(Date().timeIntervalSince(started) < 2, "woken by its NOTIFY")
        try await TestEnvironment.eventually("the row's notification seen", timeout: 5) { notifications.withLock { $0 } > before }
        // The gate was even: the row's notification names no shard.
        #expect(payloads.withLock { $0.last } == "", "\(payloads.withLock { $0 })")

        // Busy: 3 000 single-row transactions back to back (about one per 0.3 ms). Once the relay
        // polls, the gate lapses and the inserts stop notifying.
        let busyBefore = notifications.withLock { $0 }
        for i in 0..<3_000 {
            try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, convert_to($2, 'UTF8'), 'v')", [.text(topic), .text("k\(i % 50)")])
        }
        try await TestEnvironment.eventually("the burst relayed") { try TestEnvironment.count(table) == 0 }
        let busyNotifications = notifications.withLock { $0 } - busyBefore
        print("notification gate: \(busyNotifications) of 3 000 busy inserts notified")
        let stats = await relay.relay.statistics()
        try await relay.stop()
        #expect(stats.busyPolls > 0, "the relay polled while rows kept coming")
        #expect(stats.deferredReportTakes > 0, "while polling, the claim loop took the reports at its pauses' end")
        // The relay closed the gate when it switched to polling: most inserts did not notify.
        // (How many did depends on how soon the relay sees the burst: 52-196 in six local runs,
        // 313 once in a fresh-clone CI run; without the gate it is all 3 000.)
        #expect(busyNotifications < 600, "\(busyNotifications) of 3 000 inserts notified")
        let v = try Verification.verify(topics: [topic], expectedIds: Set(try idsRelayed(table: table, topic: topic)))
        #expect(v.lost.isEmpty && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
    }

    /// A transaction that ran its INSERT before any replica opened the gate sends no NOTIFY at
    /// its commit. Committing well after the relay's start-up (its extra claim and first short
    /// wait), it is still relayed at once, although the poll timer is 10 minutes: the relay
    /// follows up until every transaction older than the gate has ended (WakeMode.followUpUntil).
    @Test func aRowInsertedBeforeTheGateOpenedIsRelayedSoonAfterItsLateCommit() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let config = TestEnvironment.notifiedConfiguration(table: table, pollMillis: 600_000)
        let writer = try TestEnvironment.connect()
        try writer.query("BEGIN")
        try writer.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'late', 'v')", [.text(topic)])
        let relay = try await RunningRelay.startWaitingForNotifications(config)
        // Not synchronisation: the commit must come after the reopening's extra claim and its
        // 50 ms first wait, which find rows committed meanwhile without any follow-up.
        try await Task.sleep(nanoseconds: 300_000_000)
        let committed = Date()
        try writer.query("COMMIT")
        try await TestEnvironment.eventually("the late row relayed", timeout: 10) { try TestEnvironment.count(table) == 0 }
        let took = Date().timeIntervalSince(committed)
        try await relay.stop()
        #expect(took < 2, "relayed \(took) s after its commit")
        let v = try Verification.verify(topics: [topic], expectedIds: [1])
        #expect(v.lost.isEmpty && v.duplicates == 0, "\(v)")
    }

    /// Two replicas share one gate. One that switches to polling closes the gate it opened —
    /// also when another replica declared it before and still sleeps on it (its renewal comes
    /// only at half its declaration). The close notifies `gate-closed`, and a sleeping replica
    /// opens the gate again. Here the test plays the closing replica: in one transaction it
    /// closes the gate (a sequence: at once, not at commit), inserts a row — which therefore sends
    /// no NOTIFY — and notifies `gate-closed`, delivered at the commit with the row.
    @Test func aReplicaSleepingOnTheGateReopensItWhenAnotherClosesIt() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let config = TestEnvironment.notifiedConfiguration(table: table, pollMillis: 600_000)
        let relay = try await RunningRelay.startWaitingForNotifications(config)
        let declarations = await relay.relay.statistics().gateDeclarations
        let conn = try TestEnvironment.connect()
        try conn.query("BEGIN")
        try conn.query("SELECT setval(\(quoteLiteral(table.notifyUntilSQL))::regclass, 0)")
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'shut-out', 'v')", [.text(topic)])
        try conn.query("SELECT pg_notify($1, $2)", [.text(table.channel), .text(OutboxTable.gateClosedPayload)])
        let committed = Date()
        try conn.query("COMMIT")
        try await TestEnvironment.eventually("the row relayed", timeout: 10) { try TestEnvironment.count(table) == 0 }
        let took = Date().timeIntervalSince(committed)
        let stats = await relay.relay.statistics()
        let gate = try conn.query("SELECT last_value FROM \(table.notifyUntilSQL)").int64(0, 0)
        try await relay.stop()
        #expect(took < 2, "relayed \(took) s after its commit (poll timer 10 minutes)")
        #expect(stats.gateDeclarations > declarations, "the relay opened the gate again")
        #expect(gate > 0, "and it is open")
        let v = try Verification.verify(topics: [topic], expectedIds: [1])
        #expect(v.lost.isEmpty && v.duplicates == 0, "\(v)")
    }

    /// `--busy-poll-ms 50`: rows at about 100 a second (one every 10 ms, a trickle for the
    /// default 5 ms busy poll, which claims each on its NOTIFY) are polled every 50 ms with the
    /// gate shut, several rows a claim — and none lost, duplicated or reordered.
    @Test func aLongerBusyPollGathersATrickleIntoFewerClaims() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        var config = TestEnvironment.notifiedConfiguration(table: table, pollMillis: 30_000)
        config.busyPollMillis = 50
        let relay = try await RunningRelay.startWaitingForNotifications(config)
        let before = await relay.relay.statistics()
        let conn = try TestEnvironment.connect()
        let rows = 300
        // The workload's shape, not synchronisation: single-row transactions 10 ms apart.
        for i in 0..<rows {
            try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, convert_to($2, 'UTF8'), 'v')", [.text(topic), .text("k\(i % 20)")])
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        try await TestEnvironment.eventually("the rows relayed") { try TestEnvironment.count(table) == 0 }
        let stats = await relay.relay.statistics()
        try await relay.stop()
        let claims = stats.claims - before.claims
        print("busy poll 50 ms: \(rows) rows in \(claims) claims, \(stats.busyPolls - before.busyPolls) busy polls")
        #expect(stats.busyPolls > before.busyPolls, "the relay polled")
        #expect(claims * 2 < rows, "\(claims) claims for \(rows) rows: at least two rows a claim")
        let v = try Verification.verify(topics: [topic], expectedIds: Set(try idsRelayed(table: table, topic: topic)))
        #expect(v.lost.isEmpty && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
    }

    /// The insert trigger is row-level: each row notifies its own shard (PostgreSQL folds a
    /// transaction's identical notifications), so a multi-row transaction wakes exactly the owners
    /// of the shards it wrote. A table migrated by an older version has the statement-level
    /// trigger: it keeps working (one notification naming the statement's shards), `validate`
    /// names it with its fix, and `migrate` replaces it in place.
    @Test func theTriggerNotifiesEachRowsShardAndMigrateReplacesTheStatementLevelOne() async throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        let listener = try TestEnvironment.connect()
        try listener.executeScript("LISTEN \(quoteIdentifier(table.channel))")
        // Open the gate for ten minutes, as a waiting replica that holds only some shards would.
        let queries = OutboxQueries(table: table)
        let routed = try queries.openNotificationGate(conn, forMillis: 600_000, routed: true).value
        #expect(routed % 2 == 1, "a routed gate is odd: \(routed)")
        let rowLevel = "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND tgname = $2 AND tgtype::integer & 1 = 1"
        #expect(try conn.query(rowLevel, [.text(table.sql), .text(table.notifyTriggerName)]).int64(0, 0) == 1)

        /// Inserts `keys` (twice each) in one transaction; the payloads notified, and the rows'
        /// shards. Waits for `expected(shards)` notifications, then takes what else is there.
        func insertAndListen(_ keys: [String], expected: (Set<Int32>) -> Int) async throws -> (payloads: [String], shards: Set<Int32>) {
            let values = keys.flatMap { [$0, $0] }.map { "('t', convert_to('\($0)', 'UTF8'), 'v')" }.joined(separator: ", ")
            try conn.executeScript("DELETE FROM \(table.sql); INSERT INTO \(table.sql) (topic, key, value) VALUES \(values)")
            let r = try conn.query("SELECT DISTINCT \(table.shardSQL("o")) FROM \(table.sql) AS o")
            let shards = Set(try (0..<r.rowCount).map { i throws(PGError) in try r.int32(i, 0) })
            var payloads: [String] = []
            try await TestEnvironment.eventually("the transaction's notifications", timeout: 5) {
                payloads += try listener.drainNotifications().map(\.payload)
                return payloads.count >= expected(shards)
            }
            // One more than expected would have come with them (one queue read, one commit).
            payloads += try listener.drainNotifications().map(\.payload)
            return (payloads, shards)
        }

        let keys = (0..<6).map { "key-\($0)" }
        let prefix = WakeFilter.payloadPrefix
        let fresh = try await insertAndListen(keys) { $0.count }
        #expect(fresh.shards.count > 1, "the keys fall in several shards: \(fresh.shards)")
        #expect(fresh.payloads.sorted() == fresh.shards.map { "\(prefix)\($0)" }.sorted(), "one notification per shard, none per duplicate row: \(fresh.payloads)")
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)

        // An older migration's statement-level trigger, with the function of this version.
        try conn.executeScript("""
            CREATE OR REPLACE TRIGGER \(quoteIdentifier(table.notifyTriggerName)) AFTER INSERT ON \(table.sql)
            REFERENCING NEW TABLE AS outbox_relay_new_rows FOR EACH STATEMENT EXECUTE FUNCTION \(table.notifyFunctionSQL)();
            """)
        let old = try await insertAndListen(keys) { _ in 1 }
        #expect(old.payloads.count == 1, "one notification for the statement: \(old.payloads)")
        let listed = old.payloads.first.map { Set($0.dropFirst(prefix.count).split(separator: ",").compactMap { Int32($0) }) }
        #expect(listed == old.shards, "it names the statement's shards: \(old.payloads)")
        let diffs = try SchemaValidation.differences(conn, table: table)
        #expect(diffs.count == 1 && diffs[0].problem.contains("statement-level") && diffs[0].fix.contains("FOR EACH ROW"), "\(diffs)")

        // migrate replaces it in place.
        try Migration.run(on: conn, table: table)
        #expect(try conn.query(rowLevel, [.text(table.sql), .text(table.notifyTriggerName)]).int64(0, 0) == 1)
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)
        let again = try await insertAndListen(keys) { $0.count }
        #expect(again.payloads.sorted() == again.shards.map { "\(prefix)\($0)" }.sorted(), "\(again.payloads)")

        // A gate declared by a replica that holds every shard (even): the trigger leaves the
        // shard out, and the transaction notifies once, with an empty payload, which wakes
        // every listener.
        let unrouted = try queries.openNotificationGate(conn, forMillis: 600_000, routed: false).value
        #expect(unrouted % 2 == 0 && unrouted > 0, "an unrouted gate is even: \(unrouted)")
        let whole = try await insertAndListen(keys) { _ in 1 }
        #expect(whole.payloads == [""], "one notification without a shard: \(whole.payloads)")
        let filter = WakeFilter(shardCount: 256)
        filter.update([])
        #expect(filter.wakes(""), "an empty payload wakes a replica whatever it holds")
    }

    /// The trigger's WHEN only asks whether a gate is declared; the function compares the
    /// declaration with the clock. A declaration that ran out (its replica died waiting for
    /// notifications) notifies nobody, and a replica's heartbeat clears it, so that INSERTs stop
    /// calling the function: the clearing statement closes only a declaration more than its grace
    /// in the past, and tells sleeping replicas (`gate-closed`) as a close does.
    @Test func aLapsedDeclarationNotifiesNobodyAndIsCleared() async throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        let listener = try TestEnvironment.connect()
        try listener.executeScript("LISTEN \(quoteIdentifier(table.channel))")
        let queries = OutboxQueries(table: table)
        func declare(_ offsetMillis: Int64) throws {
            // Odd: notifications name the row's shard.
            try conn.query("SELECT setval($1::regclass, (\(OutboxTable.gateClockSQL) + $2) | 1)",
                           [.text(table.notifyUntilSQL), .int8(offsetMillis)])
        }
        func gate() throws -> Int64 { try conn.query("SELECT last_value FROM \(table.notifyUntilSQL)").int64(0, 0) }
        let shard = { (key: String) throws -> Int32 in
            try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ('t', convert_to($1, 'UTF8'), 'v') RETURNING \(table.shardSQL(table.sql))", [.text(key)]).int32(0, 0)
        }

        // Ran out five seconds ago: the row in between notifies nobody. (Notifications arrive in
        // commit order: the open gate's row, inserted after it, proves the first sent none.)
        try declare(-5_000)
        _ = try shard("lapsed")
        try declare(600_000)
        let open = try shard("open")
        var payloads: [String] = []
        try await TestEnvironment.eventually("the open gate's notification", timeout: 5) {
            payloads += try listener.drainNotifications().map(\.payload)
            return !payloads.isEmpty
        }
        payloads += try listener.drainNotifications().map(\.payload)
        #expect(payloads == ["\(WakeFilter.payloadPrefix)\(open)"], "only the row under the open gate notified: \(payloads)")

        // A declaration still running, or closed, is left alone; one past its grace is closed.
        #expect(try queries.clearLapsedNotificationGate(conn) == false)
        #expect(try gate() > 0)
        try declare(-500)
        #expect(try queries.clearLapsedNotificationGate(conn, graceMillis: 1_000) == false, "within the grace")
        try declare(-5_000)
        #expect(try queries.clearLapsedNotificationGate(conn) == true)
        #expect(try gate() == 0)
        #expect(try queries.clearLapsedNotificationGate(conn) == false, "a closed gate stays as it is")
        var closed: [String] = []
        try await TestEnvironment.eventually("the clearing's gate-closed notification", timeout: 5) {
            closed += try listener.drainNotifications().map(\.payload)
            return closed.contains(OutboxTable.gateClosedPayload)
        }

        // A running replica clears one on its heartbeat (every 0.1 s here). An idle replica
        // renews its own declaration about once a second, which also replaces a lapsed one; so
        // plant a lapsed declaration again whenever the gate is not one, until a heartbeat has
        // cleared one.
        var config = TestEnvironment.notifiedConfiguration(table: table, pollMillis: 30_000)
        config.heartbeatIntervalMillis = 100
        let relay = try await RunningRelay.startWaitingForNotifications(config)
        func lapsed() throws -> Bool {
            try conn.query("SELECT last_value > 0 AND last_value < \(OutboxTable.gateClockSQL) FROM \(table.notifyUntilSQL)").bool(0, 0)
        }
        try await TestEnvironment.eventually("a heartbeat cleared a lapsed declaration", timeout: 15) {
            if await relay.relay.statistics().lapsedGatesCleared > 0 { return true }
            if try !lapsed() { try declare(-5_000) }
            return false
        }
        try await relay.stop()
    }

    private func idsRelayed(table: OutboxTable, topic: String) throws -> [Int64] {
        let last = try TestEnvironment.connect().query("SELECT last_value FROM \(table.sequenceSQL)").int64(0, 0)
        return Array(1...last)
    }
}
