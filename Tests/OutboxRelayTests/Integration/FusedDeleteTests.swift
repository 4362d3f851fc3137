import Foundation
import OutboxRelay
import PGClient
import Testing

/// Acknowledged rows of a trickle are deleted by the next claim's statement (issue 13): one round
/// trip and one transaction instead of two. The DELETE keeps its lease check, and a row with no
/// claim after it is still deleted by itself.
@Suite(.serialized) struct FusedDeleteTests {
    /// A fresh table with `rows` rows (keys k1, k2, ...) and every lease held by "me" at epoch 7.
    private func tableLeasedToMe(rows: Int) throws -> (table: OutboxTable, conn: PGConnection, queries: OutboxQueries) {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) SELECT 't', convert_to('k' || i, 'UTF8'), 'v' FROM generate_series(1, \(rows)) AS i")
        try conn.query("UPDATE \(table.leasesSQL) SET owner = 'me', epoch = 7")
        return (table, conn, OutboxQueries(table: table))
    }

    /// Every row of the table, claimed on all shards from a fresh cursor.
    private func claimAll(_ conn: PGConnection, _ queries: OutboxQueries) throws -> [ClaimedRow] {
        try queries.claim(conn, shards: Array(0..<256), allShards: true, request: ClaimCursor().nextRequest(limit: 100, inFlight: [])).rows
    }

    @Test func aClaimDeletesOnlyRowsWhoseLeaseItHolds() throws {
        let (table, conn, queries) = try tableLeasedToMe(rows: 3)
        let rows = try conn.query("SELECT id, \(table.shardSQL("o")) FROM \(table.sql) AS o ORDER BY id")
        let ids = try (0..<rows.rowCount).map { try rows.int64($0, 0) }
        let shards = try (0..<rows.rowCount).map { try rows.int32($0, 1) }
        // One epoch per id: the second row was produced under an epoch its shard's lease no
        // longer has (a lease this replica lost), so it must stay. Ids in any order, each with its own.
        let batch = try queries.claim(conn, shards: Array(0..<256), allShards: true,
                                      request: ClaimCursor().nextRequest(limit: 100, inFlight: ids),
                                      deleting: .init(ids: ids.reversed(), owner: "me", shards: shards.reversed(), epochs: [7, 6, 7]))
        let request = ClaimCursor().nextRequest(limit: 100, inFlight: ids)
        #expect(batch.deleted == 2)
        #expect(batch.rows.isEmpty, "the rows being deleted are in flight: not read again")
        let left = try conn.query("SELECT id FROM \(table.sql)")
        #expect(left.rowCount == 1)
        let kept = try left.int64(0, 0)
        #expect(kept == ids[1])
        // Another owner's DELETE deletes nothing.
        let other = try queries.claim(conn, shards: Array(0..<256), allShards: true, request: request,
                                      deleting: .init(ids: [ids[1]], owner: "someone-else", shards: [shards[1]], epochs: [7]))
        #expect(other.deleted == 0)
        // Nor one whose shard's lease moved on to another epoch in the database.
        try conn.query("UPDATE \(table.leasesSQL) SET epoch = 8 WHERE shard = (SELECT \(table.shardSQL("o")) FROM \(table.sql) AS o WHERE id = \(ids[1]))")
        let moved = try queries.claim(conn, shards: Array(0..<256), allShards: true, request: request,
                                      deleting: .init(ids: [ids[1]], owner: "me", shards: [shards[1]], epochs: [7]))
        #expect(moved.deleted == 0)
        #expect(try TestEnvironment.count(table) == 1)
        // The lease checked is the one of the shard named for the row (the shard it was claimed
        // in): another shard's lease, at epoch 7, does not match epoch 8; its own does.
        let otherShard = (shards[1] + 1) % 256
        let elsewhere = try queries.claim(conn, shards: Array(0..<256), allShards: true, request: request,
                                          deleting: .init(ids: [ids[1]], owner: "me", shards: [otherShard], epochs: [8]))
        #expect(elsewhere.deleted == 0)
        let held = try queries.claim(conn, shards: Array(0..<256), allShards: true, request: request,
                                     deleting: .init(ids: [ids[1]], owner: "me", shards: [shards[1]], epochs: [8]))
        #expect(held.deleted == 1)
        #expect(try TestEnvironment.count(table) == 0)
        // Without a DELETE the claim reports none.
        #expect(try queries.claim(conn, shards: Array(0..<256), allShards: true, request: request).deleted == nil)
    }

    /// A claim carries up to `FusedDelete.maxIds` rows, each with its own shard and epoch, in any
    /// order: the statement pairs every id with its own, never a neighbour's.
    @Test func aFullFusedDeleteMatchesEachIdWithItsOwnEpoch() throws {
        let n = OutboxQueries.FusedDelete.maxIds
        let (table, conn, queries) = try tableLeasedToMe(rows: n)
        let rows = try conn.query("SELECT id, \(table.shardSQL("o")) FROM \(table.sql) AS o ORDER BY id")
        var generator = SystemRandomNumberGenerator()
        let claimed = try (0..<rows.rowCount).map { (try rows.int64($0, 0), try rows.int32($0, 1)) }.shuffled(using: &generator)
        let ids = claimed.map(\.0)
        // Every third id (in the shuffled order) names an epoch its lease does not have.
        let epochs: [Int64] = ids.indices.map { $0 % 3 == 0 ? 6 : 7 }
        let stale = Set(ids.indices.filter { $0 % 3 == 0 }.map { ids[$0] })
        let batch = try queries.claim(conn, shards: Array(0..<256), allShards: true,
                                      request: ClaimCursor().nextRequest(limit: 100, inFlight: ids),
                                      deleting: .init(ids: ids, owner: "me", shards: claimed.map(\.1), epochs: epochs))
        #expect(batch.deleted == n - stale.count)
        let left = try conn.query("SELECT id FROM \(table.sql)")
        #expect(Set(try (0..<left.rowCount).map { try left.int64($0, 0) }) == stale)
    }

    @Test func aTrickleIsDeletedByItsNextClaimsAndALastRowByAClaimSoonAfter() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let config = TestEnvironment.notifiedConfiguration(table: table, pollMillis: 30_000)  // woken by NOTIFY only
        let relay = try await RunningRelay.startWaitingForNotifications(config)
        let conn = try TestEnvironment.connect()
        // Rows 20 ms apart: each is claimed alone on its NOTIFY, and is acknowledged long before
        // the next one comes, whose claim then carries its DELETE. The reports come while the
        // claim loop waits for that NOTIFY: it takes them itself when the wait ends (they wake
        // no report loop), so its claim carries their deletes.
        let rows = 40
        for i in 0..<rows {
            try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, convert_to($2, 'UTF8'), 'v')", [.text(topic), .text("k\(i % 7)")])
            let produced = i + 1
            try await TestEnvironment.eventually("row \(produced) acknowledged", timeout: 10) { await relay.relay.statistics().delivered >= produced }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        // The last row has no NOTIFY after it: with its report outstanding the claim loop's wait
        // ends after fusedDeleteWaitSeconds, and the claim that follows carries its DELETE (with
        // a 30 s wait, the report loop's own timer would take the report, and the delete loop
        // would delete it by itself). The table can be empty a moment before the relay has
        // counted the DELETE's result: wait for both.
        try await TestEnvironment.eventually("every row deleted", timeout: 5) { try TestEnvironment.count(table) == 0 }
        try await TestEnvironment.eventually("every DELETE counted", timeout: 5) { await relay.relay.statistics().deleted >= rows }
        let stats = await relay.relay.statistics()
        try await relay.stop()
        #expect(stats.deleted == rows)
        #expect(stats.fusedDeletes >= rows / 2, "\(stats.fusedDeletes) of \(stats.claims) claims carried a DELETE")
        #expect(stats.deleteStatements == 0, "\(stats.deleteStatements) DELETEs of the delete loop: every row's DELETE rides a claim")
        #expect(stats.deferredReportTakes >= rows / 2, "the claim loop took the reports itself \(stats.deferredReportTakes) times")
        let v = try Verification.verify(topics: [topic], expectedIds: Set(1...Int64(rows)))
        #expect(v.lost.isEmpty && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
    }

    /// While the claim loop sleeps on the claim session's thread (for a notification, or a busy
    /// poll's pause), the relay's actor stays free: reports, deletes, leases and the health
    /// endpoint go on. (A version that called the session inline from the actor to save two job
    /// hand-overs per claim held the actor through every such wait: with concurrent writers rows
    /// then waited up to 320 ms, p99 281 ms against 8.)
    @Test func theActorStaysFreeWhileTheClaimLoopWaitsForANotification() async throws {
        let table = try TestEnvironment.migratedTable()
        let config = TestEnvironment.notifiedConfiguration(table: table, pollMillis: 30_000)  // a wait of seconds
        let relay = try await RunningRelay.startWaitingForNotifications(config)
        let claimsBefore = await relay.relay.statistics().claims
        var slowest = 0.0
        let end = Date().addingTimeInterval(2)
        while Date() < end {
            let start = Date()
            _ = await relay.relay.statistics()  // isolated to the actor
            slowest = max(slowest, Date().timeIntervalSince(start))
            try await Task.sleep(nanoseconds: 50_000_000)  // paces the probes; not a synchronisation
        }
        let claimsAfter = await relay.relay.statistics().claims
        try await relay.stop()
        // The gate's follow-up reads run first; then the loop waits (a polling loop would claim
        // hundreds of times in 2 s).
        #expect(claimsAfter - claimsBefore <= 3, "the claim loop was waiting: \(claimsAfter - claimsBefore) claims in 2 s")
        #expect(slowest < 0.5, "the actor answered within \(slowest) s while the claim loop waited")
    }

    /// After a lost connection the relay deletes the rows it had in flight with their
    /// `created_at` checked too: after an asynchronous failover an id may name a new row (the new
    /// primary's sequence hands ids out again), and that row must stay (Relay.resyncAfterConnectionLoss).
    @Test func aCheckedDeleteLeavesARowWhoseIdNamesAnotherRowNow() throws {
        let (table, conn, queries) = try tableLeasedToMe(rows: 3)
        let epochs = [Int64](repeating: 7, count: 256)
        let claimed = try claimAll(conn, queries)
        #expect(claimed.count == 3)
        let ids = claimed.map(\.id)
        // Row 2 is "another row" now: same id, created later (as after a failover).
        try conn.query("UPDATE \(table.sql) SET created_at = created_at + interval '1 second' WHERE id = $1", [.int8(ids[1])])
        let deleted = try queries.deleteChecked(conn, ids: ids, createdAtMicros: claimed.map(\.createdAtMicros), owner: "me", epochs: epochs)
        #expect(deleted == 2)
        let left = try conn.query("SELECT id FROM \(table.sql)")
        #expect(left.rowCount == 1)
        #expect(try left.int64(0, 0) == ids[1])
        // The lease check still applies.
        let other = try queries.deleteChecked(conn, ids: [ids[1]], createdAtMicros: [claimed[1].createdAtMicros + 1_000_000],
                                              owner: "someone-else", epochs: epochs)
        #expect(other == 0)
        #expect(try queries.deleteChecked(conn, ids: [ids[1]], createdAtMicros: [claimed[1].createdAtMicros + 1_000_000],
                                          owner: "me", epochs: epochs) == 1)
    }

    /// Once every row that was in the window at a lost connection has left it, the relay stops
    /// looking for such rows in each DELETE (Relay.forgetStaleMarkWhenClear; before, the mark
    /// stayed for the process's life).
    @Test func theRelayForgetsTheRowsOfALostConnectionOnceTheyHaveLeft() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        // Its own application_name, so that only this relay's backends are terminated.
        let name = "outbox-relay-resync-\(UUID().uuidString.prefix(8).lowercased())"
        var config = TestEnvironment.configuration(table: table)
        config.databaseURL = TestEnvironment.databaseURL + (TestEnvironment.databaseURL.contains("?") ? "&" : "?") + "application_name=\(name)"
        let relay = try await RunningRelay.start(config)
        let conn = try TestEnvironment.connect()
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || (i % 50), 'UTF8'), 'v' FROM generate_series(1, 3000) AS i",
                       [.text(topic)])
        try await TestEnvironment.eventually("some rows delivered") { await relay.relay.statistics().delivered > 0 }
        _ = try conn.query("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", [.text(name)])
        try await TestEnvironment.eventually("the lost connection seen", timeout: 20) { await relay.relay.statistics().connectionResyncs > 0 }
        try await TestEnvironment.eventually("every row deleted", timeout: 30) { try TestEnvironment.count(table) == 0 }
        try await TestEnvironment.eventually("the rows of the lost connection forgotten", timeout: 10) {
            await !relay.relay.statistics().checksStaleRows
        }
        try await relay.stop()
        let v = try Verification.verify(topics: [topic], expectedIds: Set(1...3000))
        #expect(v.lost.isEmpty && v.orderInversions == 0, "\(v)")
    }

    /// The dead-letter move of a row read before a lost connection checks its `created_at` too:
    /// after an asynchronous failover its id may name a newer row, which must stay in the outbox.
    @Test func aCheckedDeadLetterMoveLeavesARowWhoseIdNamesAnotherRowNow() throws {
        let (table, conn, queries) = try tableLeasedToMe(rows: 2)
        let deadLetters = DeadLetterQueries(table: table)
        let claimed = try claimAll(conn, queries)
        #expect(claimed.count == 2)
        // Row 2 is "another row" now: same id, created later (as after a failover).
        try conn.query("UPDATE \(table.sql) SET created_at = created_at + interval '1 second' WHERE id = $1", [.int8(claimed[1].id)])
        func move(_ row: ClaimedRow) throws -> Bool {
            try deadLetters.deadLetter(conn, rowId: row.id, owner: "me", epoch: 7, reason: "test", errorCode: nil,
                                       createdAtMicros: row.createdAtMicros)
        }
        #expect(try move(claimed[0]), "the row read is still there: moved")
        #expect(try !move(claimed[1]), "the id names a newer row: not moved")
        let left = try conn.query("SELECT id FROM \(table.sql)")
        #expect(left.rowCount == 1)
        #expect(try left.int64(0, 0) == claimed[1].id)
        let dead = try conn.query("SELECT id FROM \(table.deadLetterSQL)")
        #expect(dead.rowCount == 1)
        #expect(try dead.int64(0, 0) == claimed[0].id)
        // Unchecked (no created_at), the move takes whatever row has the id, lease permitting.
        #expect(try !deadLetters.deadLetter(conn, rowId: claimed[1].id, owner: "someone-else", epoch: 7, reason: "test", errorCode: nil))
        #expect(try deadLetters.deadLetter(conn, rowId: claimed[1].id, owner: "me", epoch: 7, reason: "test", errorCode: nil))
    }

    /// A DELETE of many ids reads the lease table once per statement instead of once per row
    /// (OutboxQueries.deleteManySQL); it must delete exactly what the per-row form deletes.
    @Test func aDeleteOfManyIdsChecksEveryRowsLeaseLikeOneOfAFew() throws {
        let (table, conn, queries) = try tableLeasedToMe(rows: 400)
        // Shards 0-9: another owner; 10-19: this owner at a newer epoch than the rows were
        // produced under; the rest: this owner at the expected epoch.
        try conn.query("UPDATE \(table.leasesSQL) SET owner = 'other' WHERE shard < 10")
        try conn.query("UPDATE \(table.leasesSQL) SET epoch = 8 WHERE shard BETWEEN 10 AND 19")
        let epochs = [Int64](repeating: 7, count: 256)
        let rows = try conn.query("SELECT id, \(table.shardSQL("o")) FROM \(table.sql) AS o ORDER BY id")
        let all = try (0..<rows.rowCount).map { (id: try rows.int64($0, 0), shard: try rows.int32($0, 1)) }
        let deletable = Set(all.filter { $0.shard >= 20 }.map(\.id))
        #expect(deletable.count > 0 && deletable.count < all.count, "the keys must spread over the shards")
        // A few ids (one lease lookup per row), then the rest in one DELETE of many.
        let few = Array(all.prefix(OutboxQueries.deleteManyFrom - 1).map(\.id))
        let many = Array(all.dropFirst(few.count).map(\.id))
        #expect(many.count >= OutboxQueries.deleteManyFrom)
        let deletedFew = try queries.delete(conn, ids: few, owner: "me", epochs: epochs)
        let deletedMany = try queries.delete(conn, ids: many, owner: "me", epochs: epochs)
        #expect(deletedFew == few.filter { deletable.contains($0) }.count)
        #expect(deletedMany == many.filter { deletable.contains($0) }.count)
        let left = try conn.query("SELECT id FROM \(table.sql)")
        let leftIds = Set(try (0..<left.rowCount).map { try left.int64($0, 0) })
        #expect(leftIds == Set(all.map(\.id)).subtracting(deletable))
        // Another replica's DELETE of many deletes nothing.
        #expect(try queries.delete(conn, ids: Array(leftIds), owner: "someone-else", epochs: epochs) == 0)
    }
}
