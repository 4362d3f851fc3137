import Foundation
import Kafka
import OutboxRelay
import PGClient
import Testing

/// Faults on real processes: the relay killed or paused, the database terminating connections.
@Suite(.serialized) struct ProcessFaultTests {
    func insert(_ table: OutboxTable, topic: String, rows: Int, keys: Int, from: Int = 0) throws {
        try TestEnvironment.connect().query("""
            INSERT INTO \(table.sql) (topic, key, value)
            SELECT $1, convert_to('k' || (i % $3), 'UTF8'), convert_to('v' || i, 'UTF8')
            FROM generate_series($4::int, $4::int + $2::int - 1) AS i
            """, [.text(topic), .int4(Int32(rows)), .int4(Int32(keys)), .int4(Int32(from))])
    }

    func allIds(_ table: OutboxTable) throws -> Set<Int64> {
        let last = try TestEnvironment.connect().query("SELECT last_value FROM \(table.sequenceSQL)").int64(0, 0)
        return Set(1...last)
    }

    @Test func relayKilledMidDrainLosesNothing() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        try insert(table, topic: topic, rows: 150_000, keys: 300)
        let inFlightLimit = 2_000
        var kills = 0
        for round in 0..<3 {
            let before = try TestEnvironment.count(table)
            if before == 0 { break }
            let relay = try RelayProcess(RelayProcess.runArguments(table: table.description))
            // Wait until it has made progress, then kill it at a random point soon after.
            try await TestEnvironment.eventually("relay \(round) made progress") {
                let now = try TestEnvironment.count(table)
                return now < before || now == 0
            }
            try await Task.sleep(nanoseconds: UInt64.random(in: 0...20_000_000))
            relay.kill9()
            kills += 1
        }
        #expect(kills >= 2, "the relay must be killed mid-drain more than once")
        // The killed replicas' leases expire; a new relay takes over and drains.
        let started = Date()
        let final = try RelayProcess(RelayProcess.runArguments(table: table.description))
        try await TestEnvironment.eventually("drained after restarts", timeout: 90) { try TestEnvironment.count(table) == 0 }
        try await TestEnvironment.eventually("final relay holds its leases") {
            try TestEnvironment.connect().query("SELECT count(*) FROM \(table.replicasSQL) WHERE pid = $1", [.int4(final.pid)]).int64(0, 0) == 1
        }
        let recovery = Date().timeIntervalSince(started)
        #expect(final.terminate() == 0, "\(final.output.suffix(2000))")
        let v = try Verification.verify(topics: [topic], expectedIds: try allIds(table))
        let left = try leftovers(table)
        FaultReport("relay SIGKILL mid-drain (up to 3 times at random points), then restart",
                    bound: "lost 0, duplicates <= \(kills) x in-flight window (\(inFlightLimit))", inserted: 150_000,
                    verification: v, pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: recovery,
                    note: "\(kills) kills; recovery = restart to backlog 0, including lease expiry (6 s)").write()
        #expect(v.lost.count == 0, "\(v)")
        #expect(v.duplicates <= kills * inFlightLimit, "\(v)")
        #expect(v.orderInversions == 0, "\(v)")
    }

    /// With `killingConnections`, both relays' database connections are also terminated every
    /// 50–400 ms throughout (a compound fault: it once let a claim read before a rewind be
    /// produced ahead of the rewound rows).
    @Test(arguments: [false, true])
    func aPausedReplicaDeletesNothingItNoLongerOwns(killingConnections: Bool) async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        // The relays' own application_name (the URL's wins), so only their backends are killed.
        let appName = "outbox-relay-paused-\(UUID().uuidString.prefix(8).lowercased())"
        func args(_ name: String) -> [String] {
            var args = RelayProcess.runArguments(table: table.description, extra: ["--replica-name", name, "--relay-header", "sent-by"])
            if killingConnections {
                args[args.firstIndex(of: "--database-url")! + 1] = TestEnvironment.databaseURL
                    + (TestEnvironment.databaseURL.contains("?") ? "&" : "?") + "application_name=\(appName)"
            }
            return args
        }
        let killer = Task {
            guard killingConnections else { return 0 }
            let admin = try TestEnvironment.connect()
            var killed = 0
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64.random(in: 50_000_000...400_000_000))  // the fault's rhythm
                killed += Int(try admin.query("""
                    SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t
                    """, [.text(appName)]).int64(0, 0))
            }
            return killed
        }
        defer { killer.cancel() }
        let a = try RelayProcess(args("a-paused"))
        try await TestEnvironment.eventually("a holds all shards") {
            try TestEnvironment.connect().query("SELECT count(*) FROM \(table.leasesSQL) WHERE owner = 'a-paused'").int64(0, 0) == 256
        }
        try insert(table, topic: topic, rows: 20_000, keys: 200)
        try await TestEnvironment.eventually("a made progress") { try TestEnvironment.count(table) < 20_000 }
        a.signal(SIGSTOP)
        let pausedAt = Date()
        let b = try RelayProcess(args("b-taker"))
        try await TestEnvironment.eventually("b took every shard after a's leases expired", timeout: 30) {
            try TestEnvironment.connect().query("SELECT count(*) FROM \(table.leasesSQL) WHERE owner = 'b-taker' AND expires_at > now()").int64(0, 0) == 256
        }
        let takeover = Date().timeIntervalSince(pausedAt)
        try insert(table, topic: topic, rows: 2_000, keys: 200, from: 20_000)
        a.signal(SIGCONT)
        try await TestEnvironment.eventually("drained", timeout: 60) { try TestEnvironment.count(table) == 0 }
        killer.cancel()
        let killed = try await killer.value
        #expect(a.terminate() == 0, "relay a: \(a.output.suffix(3000))")
        #expect(b.terminate() == 0, "relay b: \(b.output.suffix(3000))")
        if killingConnections { #expect(killed > 0) }
        let v = try Verification.verify(topics: [topic], expectedIds: try allIds(table))
        let left = try leftovers(table)
        FaultReport("replica SIGSTOPped past its lease while another takes over, then resumed" + (killingConnections ? "; both relays' database connections terminated every 50–400 ms" : ""),
                    bound: "lost 0, order inversions 0; the resumed replica's late DELETEs match nothing (lease-checked)", inserted: 22_000,
                    verification: v, pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: takeover,
                    note: "recovery = pause to take-over by the other replica (lease 6 s)" + (killingConnections ? "; \(killed) backends terminated" : "")).write()
        #expect(v.lost.count == 0, "\(v)")
        #expect(v.duplicates <= 2_000, "at most a's in-flight window: \(v)")
        // The resumed replica's producer saw its in-flight requests time out and (on Tansu) its
        // bumped epoch fenced: both now end in a fatal error and an in-order re-send.
        #expect(v.orderInversions == 0, "\(v)")
    }

    @Test func terminatedDatabaseConnectionsMidDrainLoseNothing() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        try insert(table, topic: topic, rows: 60_000, keys: 200)
        // Its own application_name (the URL's wins over the relay's), so that only this relay's
        // backends are terminated, never those of tests running alongside.
        let name = "outbox-relay-terminated-\(UUID().uuidString.prefix(8).lowercased())"
        var args = RelayProcess.runArguments(table: table.description)
        args[args.firstIndex(of: "--database-url")! + 1] = TestEnvironment.databaseURL + (TestEnvironment.databaseURL.contains("?") ? "&" : "?") + "application_name=\(name)"
        let relay = try RelayProcess(args)
        try await TestEnvironment.eventually("relay running") { try TestEnvironment.count(table) < 60_000 }
        let admin = try TestEnvironment.connect()
        var terminated = 0
        for _ in 0..<8 {
            try await Task.sleep(nanoseconds: UInt64.random(in: 5_000_000...40_000_000))
            terminated += Int(try admin.query("""
                SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE application_name = $1 AND pid <> pg_backend_pid()) t
                """, [.text(name)]).int64(0, 0))
        }
        let started = Date()
        try await TestEnvironment.eventually("drained after connection kills", timeout: 60) { try TestEnvironment.count(table) == 0 }
        let recovery = Date().timeIntervalSince(started)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: try allIds(table))
        let left = try leftovers(table)
        FaultReport("PostgreSQL connections terminated (pg_terminate_backend) 8 times mid-drain",
                    bound: "lost 0, duplicates 0 (DELETE retried, idempotent)", inserted: 60_000, verification: v,
                    pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: recovery,
                    note: "\(terminated) backends terminated").write()
        #expect(terminated > 0)
        #expect(v.lost.count == 0, "\(v)")
        #expect(v.duplicates == 0, "\(v)")
        #expect(v.orderInversions == 0, "\(v)")
    }

    @Test(arguments: [1.0, 4.0])
    func brokerPausedLosesNothing(_ seconds: Double) async throws {
        let broker = try PrivateBroker()
        let table = try TestEnvironment.migratedTable()
        let topic = "pause-\(UUID().uuidString.prefix(8).lowercased())"
        try KafkaAdmin.createTopic(topic, partitions: 4, configuration: KafkaConfiguration([("bootstrap.servers", broker.brokers)]))
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description, brokers: broker.brokers))
        try insert(table, topic: topic, rows: 5_000, keys: 100)
        try await TestEnvironment.eventually("progress") { try TestEnvironment.count(table) < 5_000 }
        broker.pause()
        try insert(table, topic: topic, rows: 5_000, keys: 100, from: 5_000)
        try await Task.sleep(nanoseconds: UInt64(seconds * 1_000_000_000))  // the fault's duration, not a synchronisation
        broker.resume()
        let resumedAt = Date()
        try await TestEnvironment.eventually("drained after the pause", timeout: 90) { try TestEnvironment.count(table) == 0 }
        let recovery = Date().timeIntervalSince(resumedAt)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: try allIds(table),
                                        configuration: KafkaConfiguration([("bootstrap.servers", broker.brokers)]))
        broker.stop()
        let left = try leftovers(table)
        FaultReport("broker paused (SIGSTOP) \(seconds) s, message.timeout.ms 2000",
                    bound: "lost 0, duplicates <= in-flight window (2000), order inversions 0", inserted: 10_000, verification: v,
                    pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: recovery,
                    note: "recovery = resume to backlog 0").write()
        #expect(v.lost.count == 0, "\(v)")
        #expect(v.duplicates <= 2_000, "\(v)")
        #expect(v.orderInversions == 0, "\(v)")
        #expect(left.deadLettered == 0, "a broker outage must not dead-letter rows")
    }

    @Test func brokerKilledAndRestartedWithDurableStorageLosesNothing() async throws {
        let s3 = try MotoS3()
        let broker = try PrivateBroker(storage: "s3://tansu/", environment: s3.tansuEnvironment)
        let table = try TestEnvironment.migratedTable()
        let topic = "durable-\(UUID().uuidString.prefix(8).lowercased())"
        let kafka = KafkaConfiguration([("bootstrap.servers", broker.brokers)])
        try KafkaAdmin.createTopic(topic, partitions: 2, configuration: kafka)
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description, brokers: broker.brokers))
        try insert(table, topic: topic, rows: 1_500, keys: 50)
        try await TestEnvironment.eventually("progress", timeout: 60) { try TestEnvironment.count(table) < 1_500 }
        let lastBeforeRestart = try TestEnvironment.connect().query("SELECT last_value FROM \(table.sequenceSQL)").int64(0, 0)
        try broker.crashAndRestart()
        let restartedAt = Date()
        try insert(table, topic: topic, rows: 500, keys: 50, from: 1_500)
        try await TestEnvironment.eventually("drained after the broker restart", timeout: 120) { try TestEnvironment.count(table) == 0 }
        let recovery = Date().timeIntervalSince(restartedAt)
        #expect(relay.terminate() == 0)
        let v = try Verification.verify(topics: [topic], expectedIds: try allIds(table), configuration: kafka)
        broker.stop()
        let left = try leftovers(table)
        let lostAfterRestart = v.lost.filter { $0 > lastBeforeRestart }
        FaultReport("broker killed (kill -9) and restarted, S3 storage (moto_server)",
                    bound: "rows inserted after the restart: lost 0; duplicates <= in-flight window (2000)", inserted: 2_000, verification: v,
                    pending: left.pending, deadLettered: left.deadLettered, recoverySeconds: recovery,
                    note: "recovery = restart to backlog 0. Rows acknowledged before the kill were often missing afterwards (9 of 17 runs on 2026-11-23), whole batches at a time: the restarted Tansu handed their offsets out again, and rows produced after the restart were read at them. Rows after the restart are never lost").write()
        #expect(lostAfterRestart.isEmpty, "\(v)")
        #expect(v.lost.allSatisfy { $0 <= lastBeforeRestart }, "\(v)")
        #expect(v.duplicates <= 2_000, "\(v)")
        #expect(left.deadLettered == 0)
    }
}
