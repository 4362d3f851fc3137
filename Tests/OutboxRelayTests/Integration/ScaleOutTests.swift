import Foundation
@_spi(Testing) import OutboxRelay
import PGClient
import Testing

@Suite(.serialized) struct ScaleOutTests {
    func owners(_ table: OutboxTable) throws -> [String: Int] {
        let r = try TestEnvironment.connect().query("SELECT owner, count(*) FROM \(table.leasesSQL) WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner")
        var out: [String: Int] = [:]
        for i in 0..<r.rowCount { out[r.string(i, 0)!] = Int(try r.int64(i, 1)) }
        return out
    }

    func insert(_ conn: PGConnection, _ table: OutboxTable, topics: [String], from: Int, count: Int, keys: Int) throws {
        try conn.query("""
            INSERT INTO \(table.sql) (topic, key, value)
            SELECT ($1::text[])[1 + (i % cardinality($1::text[]))], convert_to('k' || (i % $4), 'UTF8'), convert_to('v' || i, 'UTF8')
            FROM generate_series($2::int, $3::int) AS i
            """, [.text("{\(topics.joined(separator: ","))}"), .int4(Int32(from)), .int4(Int32(from + count - 1)), .int4(Int32(keys))])
    }

    @Test(arguments: [2, 3])
    func relaysShareTheTableAndHandOverOnStop(_ replicas: Int) async throws {
        let table = try TestEnvironment.migratedTable()
        let topics = try TestEnvironment.topics(2)
        let conn = try TestEnvironment.connect()
        var relays: [RunningRelay] = []
        for i in 0..<replicas {
            var c = TestEnvironment.configuration(table: table)
            c.replicaName = "replica-\(i)"
            c.recordsDeliveries = true
            relays.append(try await RunningRelay.start(c))
        }
        try await TestEnvironment.eventually("shards split evenly between \(replicas) relays") {
            let o = try owners(table)
            return o.count == replicas && o.values.reduce(0, +) == 256 && (o.values.max()! - o.values.min()!) <= 1
        }
        try insert(conn, table, topics: topics, from: 0, count: 3000, keys: 200)
        try await TestEnvironment.eventually("first batch drained") { try TestEnvironment.count(table) == 0 }
        var delivered: [Int] = []
        for r in relays { delivered.append(await r.relay.statistics().delivered) }
        #expect(delivered.allSatisfy { $0 > 0 }, "every replica relayed its share: \(delivered)")

        // Stop one: its shards move to the others at once (released, not expired).
        let stopped = relays.removeFirst()
        var stats = [await stopped.relay.statistics()]
        var ledgers = [(relay: stopped.relay.replicaId, ledger: await stopped.relay.deliveryLedger())]
        try await stopped.stop()
        try await TestEnvironment.eventually("remaining relays own every shard", timeout: 5) {
            let o = try owners(table)
            return o.count == replicas - 1 && o.values.reduce(0, +) == 256
        }
        try insert(conn, table, topics: topics, from: 3000, count: 3000, keys: 200)
        try await TestEnvironment.eventually("second batch drained") { try TestEnvironment.count(table) == 0 }
        for r in relays {
            stats.append(await r.relay.statistics())
            try await r.stop()
            ledgers.append((relay: r.relay.replicaId, ledger: await r.relay.deliveryLedger()))
        }

        let last = try conn.query("SELECT last_value FROM \(table.sequenceSQL)").int64(0, 0)
        let v = try Verification.verify(topics: topics, expectedIds: Set(1...last))
        #expect(last == 6000)
        // On a loss, say whether the relays were told the rows were delivered (broker or reader
        // side) or deleted them otherwise: delivered/deleted/failed per relay, and where each lost row
        // was acknowledged and what the topic holds there.
        #expect(v.lost.count == 0, "\(v); relays delivered/deleted/failed: \(stats.map { "\($0.delivered)/\($0.deleted)/\($0.failed)" })\n\(v.explainLosses(ledgers: ledgers))")
        let deadLetters = try conn.query("SELECT id, reason FROM \(table.deadLetterSQL) ORDER BY id LIMIT 5")
        #expect(deadLetters.rowCount == 0, "no row is dead-lettered in a fault-free run: \((0..<deadLetters.rowCount).map { "\(deadLetters.string($0, 0) ?? "") \(deadLetters.string($0, 1) ?? "")" })")
        #expect(v.duplicates == 0, "\(v)")
        #expect(v.orderInversions == 0, "\(v)")
    }
}

/// `--shard-spread load`: a quiet group has one replica claim and the others stand by; a busy
/// one spreads; a holder that stops hands everything to a standby. Rows relayed throughout,
/// none lost, duplicated or reordered.
@Suite(.serialized) struct LoadSpreadTests {
    func owners(_ table: OutboxTable) throws -> [String: Int] {
        try ScaleOutTests().owners(table)
    }

    @Test func oneReplicaClaimsWhileQuietMoreWhileBusyAndAStandbyTakesOver() async throws {
        let table = try TestEnvironment.migratedTable()
        let topics = try TestEnvironment.topics(2)
        let conn = try TestEnvironment.connect()
        func configuration(_ name: String) -> RelayConfiguration {
            var c = TestEnvironment.configuration(table: table)
            c.shardSpread = .load
            c.replicaName = name
            return c
        }
        // The first replica's produce calls take a millisecond each: a backlog keeps it busy
        // (its claim loop never idle) long enough for the group to see it.
        var slow = configuration("a-slow")
        slow.beforeProduce = { _ in usleep(1_000) }
        let a = try await RunningRelay.start(slow)
        try await TestEnvironment.eventually("a alone holds every shard") { try owners(table) == ["a-slow": 256] }
        let b = try await RunningRelay.start(configuration("b-standby"))
        let c = try await RunningRelay.start(configuration("c-standby"))
        func state() throws -> String {
            let r = try conn.query("SELECT replica_id || ' busy ' || busy::text FROM \(table.replicasSQL) ORDER BY started_at")
            return "owners \(try owners(table)); replicas \((0..<r.rowCount).map { r.string($0, 0) ?? "" })"
        }
        let settled = try await TestEnvironment.eventually("b and c see one claiming replica of three") {
            let (sb, sc) = (await b.relay.statistics(), await c.relay.statistics())
            return sb.liveReplicas == 3 && sc.liveReplicas == 3 && sb.claimingReplicas == 1 && sc.claimingReplicas == 1
        }
        if !settled { Issue.record("\(try state())") }
        #expect(try owners(table) == ["a-slow": 256], "a quiet group keeps one claiming replica")
        let (heldB, heldC) = (await b.relay.heldShards(), await c.relay.heldShards())
        #expect(heldB.isEmpty && heldC.isEmpty)
        // Standing by, they stopped listening (they look for free shards once a second instead).
        try await TestEnvironment.eventually("the standbys stopped listening to inserts") {
            let (lb, lc) = (await b.relay.statistics().listensToInserts, await c.relay.statistics().listensToInserts)
            return !lb && !lc
        }
        #expect(await a.relay.statistics().listensToInserts)

        // A trickle: a alone relays it.
        try ScaleOutTests().insert(conn, table, topics: topics, from: 0, count: 200, keys: 50)
        try await TestEnvironment.eventually("trickle drained") { try TestEnvironment.count(table) == 0 }
        let (trickleB, trickleC) = (await b.relay.statistics().delivered, await c.relay.statistics().delivered)
        #expect(trickleB == 0 && trickleC == 0, "standbys relay nothing")

        // A backlog that keeps a busy: the group grows.
        try ScaleOutTests().insert(conn, table, topics: topics, from: 200, count: 30_000, keys: 500)
        try await TestEnvironment.eventually("a busy holder is joined by a standby", timeout: 30) { try owners(table).count >= 2 }
        try await TestEnvironment.eventually("backlog drained", timeout: 120) { try TestEnvironment.count(table) == 0 }
        let (busyB, busyC) = (await b.relay.statistics().delivered, await c.relay.statistics().delivered)
        #expect(busyB + busyC > 0, "the standbys that joined relayed rows")
        // Quiet again: back to one claiming replica.
        let shrank = try await TestEnvironment.eventually("quiet: one replica claims again", timeout: 30) {
            let o = try owners(table)
            return o.count == 1 && o.values.first == 256
        }
        if !shrank { Issue.record("\(try state())") }

        // The holder stops: a standby takes every shard (released at once, not expired).
        var running = [a, b, c]
        let holder = try owners(table).keys.first!
        let stopping = running.first { $0.relay.replicaId == holder }!
        running.removeAll { $0.relay.replicaId == holder }
        try await stopping.stop()
        try await TestEnvironment.eventually("a standby took every shard", timeout: 10) {
            let o = try owners(table)
            return o.count == 1 && o.values.first == 256 && o.keys.first != holder
        }
        // The new holder listens to inserts again (before its first claim of the shards).
        let newHolder = try owners(table).keys.first!
        let taker = running.first { $0.relay.replicaId == newHolder }!
        try await TestEnvironment.eventually("the new holder listens to inserts") { await taker.relay.statistics().listensToInserts }
        try ScaleOutTests().insert(conn, table, topics: topics, from: 30_200, count: 500, keys: 50)
        try await TestEnvironment.eventually("last rows drained") { try TestEnvironment.count(table) == 0 }
        for r in running { try await r.stop() }

        let last = try conn.query("SELECT last_value FROM \(table.sequenceSQL)").int64(0, 0)
        #expect(last == 30_700)
        let v = try Verification.verify(topics: topics, expectedIds: Set(1...last))
        #expect(v.lost.count == 0, "\(v)")
        #expect(v.duplicates == 0, "\(v)")
        #expect(v.orderInversions == 0, "\(v)")
    }
}

@Suite(.serialized) struct WakeUpTests {
    /// A row wakes (only) the replica that owns its shard: with two replicas splitting the shards
    /// and no poll timer, rows of the first one's shards cost the second one no claims. Each holds
    /// only some shards, so the gate they declare is odd and the notifications name the row's
    /// shard (a replica holding every shard declares it even: no shard named, and every listener
    /// woken).
    @Test func aRowWakesOnlyItsShardsOwner() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        var config = TestEnvironment.configuration(table: table, pollMillis: 600_000)
        config.heartbeatIntervalMillis = 300
        let a = try await RunningRelay.start(config)
        let b = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("the shards split between the two") {
            let (ha, hb) = (await a.relay.heldShards().count, await b.relay.heldShards().count)
            return ha == 128 && hb == 128
        }
        let aShards = Set(await a.relay.heldShards())
        let conn = try TestEnvironment.connect()
        try await TestEnvironment.eventually("an odd gate (shards named)", timeout: 10) {
            let gate = try conn.query("SELECT last_value FROM \(table.notifyUntilSQL)").int64(0, 0)
            return gate > 0 && gate % 2 == 1
        }
        // Keys whose shard (md5-based, as the table computes it) belongs to replica a.
        var keys: [String] = []
        var i = 0
        while keys.count < 20 {
            let key = "wake-\(i)"
            let shard = try conn.query("SELECT (((('x' || substr(md5(convert_to($1, 'UTF8')), 1, 8))::bit(32)::integer & 2147483647) % 256))::integer",
                                       [.text(key)]).int32(0, 0)
            if aShards.contains(shard) { keys.append(key) }
            i += 1
        }
        // Let both settle into their idle wait, then count.
        try await TestEnvironment.eventually("idle") {
            let before = (await a.relay.statistics().claims, await b.relay.statistics().claims)
            try await Task.sleep(nanoseconds: 200_000_000)
            return (await a.relay.statistics().claims, await b.relay.statistics().claims) == before
        }
        let bBefore = await b.relay.statistics().claims
        let aBefore = await a.relay.statistics().claims
        for key in keys {
            try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, convert_to($2, 'UTF8'), 'v')", [.text(topic), .text(key)])
            try await TestEnvironment.eventually("relayed") { try TestEnvironment.count(table) == 0 }
        }
        let aClaims = await a.relay.statistics().claims - aBefore
        let bClaims = await b.relay.statistics().claims - bBefore
        try await a.stop()
        try await b.stop()
        #expect(aClaims >= 20, "the owner claimed each row: \(aClaims)")
        #expect(bClaims <= 2, "the other replica was not woken by rows it does not own: \(bClaims) claims")
    }
}
