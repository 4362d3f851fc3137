import Foundation
import Kafka
import Logging
import OutboxRelay
import PGClient
import Testing

/// The services scripts/test started. A missing variable is a test failure, never a skip:
/// a run without Postgres and the broker must not pass.
enum TestEnvironment {
    static var databaseURL: String { value("OUTBOX_TEST_DATABASE_URL") }
    static var brokers: String { value("OUTBOX_TEST_BROKERS") }

    private static func value(_ name: String) -> String {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else {
            Issue.record("\(name) is not set: run the tests through scripts/test, which starts PostgreSQL and the broker")
            return "unset://\(name)"
        }
        return v
    }

    static var kafka: KafkaConfiguration { KafkaConfiguration([("bootstrap.servers", brokers)]) }

    static var logger: Logger {
        var l = Logger(label: "outbox-relay-test")
        l.logLevel = ProcessInfo.processInfo.environment["OUTBOX_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        return l
    }

    static func connect() throws -> PGConnection {
        try PGConnection(url: databaseURL, applicationName: "outbox-relay-tests")
    }

    /// A fresh, migrated table with a unique name.
    static func migratedTable(shards: Int = 256, schema: String? = nil) throws -> OutboxTable {
        let name = "outbox_\(UUID().uuidString.prefix(8).lowercased())"
        let table = try OutboxTable(schema.map { "\($0).\(name)" } ?? name)
        let conn = try connect()
        try Migration.run(on: conn, table: table, shards: shards)
        return table
    }

    /// Unique topics, created with `partitions` partitions.
    static func topics(_ count: Int, partitions: Int32 = 4) throws -> [String] {
        try (0..<count).map { _ in
            let topic = "t-\(UUID().uuidString.prefix(12).lowercased())"
            try KafkaAdmin.createTopic(topic, partitions: partitions, configuration: kafka)
            return topic
        }
    }

    /// A relay configuration tuned for tests: short leases and timeouts, quick heartbeats.
    static func configuration(table: OutboxTable, pollMillis: Int = 200) -> RelayConfiguration {
        var c = RelayConfiguration(databaseURL: databaseURL, brokers: brokers)
        c.table = table.description
        // The in-process tests of several replicas were written for shares of the shards that
        // each replica holds whatever the load; the load spread (the default) has tests of its
        // own (ScaleOutTests), and the process and concurrency faults run with the default.
        c.shardSpread = .even
        c.batchSize = 500
        c.maxInFlightRows = 2000
        c.pollIntervalMillis = pollMillis
        c.leaseDurationMillis = 6_000
        c.heartbeatIntervalMillis = 300
        c.messageTimeoutMillis = 2_000
        c.statementTimeoutMillis = 1_000
        c.shutdownTimeoutMillis = 5_000
        return c
    }

    /// A relay that only a NOTIFY (or a busy poll) wakes: a poll timer of `pollMillis`, and leases
    /// and timeouts long enough that no renewal or expiry wakes it during a test.
    static func notifiedConfiguration(table: OutboxTable, pollMillis: Int) -> RelayConfiguration {
        var c = configuration(table: table, pollMillis: pollMillis)
        c.leaseDurationMillis = 40_000
        c.heartbeatIntervalMillis = 2_000
        c.messageTimeoutMillis = 5_000
        return c
    }

    static func count(_ table: OutboxTable) throws -> Int64 {
        try connect().query("SELECT count(*) FROM \(table.sql)").int64(0, 0)
    }

    /// Polls `condition` until it holds or `timeout` seconds pass (then records a failure).
    @discardableResult
    static func eventually(_ what: String, timeout: Double = 60, sourceLocation: SourceLocation = #_sourceLocation,
                           _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try await condition() { return true }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        Issue.record("timed out after \(timeout) s waiting for: \(what)", sourceLocation: sourceLocation)
        return false
    }
}

/// A relay running in this process.
struct RunningRelay {
    let relay: Relay
    let task: Task<Void, Error>

    static func start(_ configuration: RelayConfiguration) async throws -> RunningRelay {
        let relay = try Relay(configuration: configuration, logger: TestEnvironment.logger)
        try await relay.start()
        let task = Task { try await relay.run() }
        return RunningRelay(relay: relay, task: task)
    }

    /// Starts the relay and waits until it holds every shard and has opened the notification gate.
    static func startWaitingForNotifications(_ configuration: RelayConfiguration) async throws -> RunningRelay {
        let running = try await start(configuration)
        try await TestEnvironment.eventually("all shards held") { await running.relay.heldShards().count == 256 }
        try await TestEnvironment.eventually("the gate opened (the idle relay asked for notifications)") {
            await running.relay.statistics().gateDeclarations > 0
        }
        return running
    }

    func stop() async throws {
        relay.shutdown()
        try await task.value
    }
}
