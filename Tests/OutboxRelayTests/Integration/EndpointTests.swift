import Foundation
import Kafka
import Logging
import OutboxRelay
import PGClient
import RelayHTTP
import Testing

@Suite(.serialized) struct EndpointTests {
    /// The service graph `outbox-relay run` starts (RelayApplication), in this process.
    struct Running {
        let application: RelayApplication
        let task: Task<Void, Error>
        let port: Int
        func stop() async throws {
            application.relay.shutdown()
            task.cancel()
            _ = try? await task.value
        }
    }

    func start(_ config: RelayConfiguration) async throws -> Running {
        var config = config
        config.httpHost = "127.0.0.1"
        config.httpPort = 0
        let application = try await RelayApplication.build(configuration: config, registry: TestMetrics.registry,
                                                           logger: TestEnvironment.logger)
        let group = application.serviceGroup(logger: TestEnvironment.logger, signals: false)
        let task = Task { try await group.run() }
        var port = 0
        try await TestEnvironment.eventually("HTTP server listening") {
            port = application.http.listeningPort ?? 0
            return port > 0
        }
        return Running(application: application, task: task, port: port)
    }

    @Test func readinessFollowsTheBrokerAndMetricsFollowTheRows() async throws {
        let broker = try PrivateBroker()
        let table = try TestEnvironment.migratedTable()
        let topic = "ep-\(UUID().uuidString.prefix(8).lowercased())"
        let kafka = KafkaConfiguration([("bootstrap.servers", broker.brokers)])
        try KafkaAdmin.createTopic(topic, partitions: 2, configuration: kafka)
        // A second topic, its rows interleaved with the first's: the produced count is per topic.
        let other = topic + "-b"
        try KafkaAdmin.createTopic(other, partitions: 2, configuration: kafka)
        var config = TestEnvironment.configuration(table: table)
        config.brokers = broker.brokers
        let r = try await start(config)

        #expect(try httpGet(port: r.port, path: "/healthz").status == 200)
        try await TestEnvironment.eventually("ready") { try httpGet(port: r.port, path: "/readyz").status == 200 }
        let ready = try httpGet(port: r.port, path: "/readyz").body
        #expect(ready.contains("\"database\"") && ready.contains("\"kafka\"") && ready.contains("\"shards\""), "\(ready)")

        // Rows flow: produced count per topic equals rows inserted, backlog falls to 0.
        try TestEnvironment.connect().query("""
            INSERT INTO \(table.sql) (topic, key, value)
            SELECT CASE WHEN i % 5 = 0 THEN $2 ELSE $1 END, convert_to('k' || i, 'UTF8'), 'v' FROM generate_series(1, 300) i
            """, [.text(topic), .text(other)])
        try await TestEnvironment.eventually("drained") { try TestEnvironment.count(table) == 0 }
        let labels = "table=\"\(table.description)\""
        try await TestEnvironment.eventually("metrics show the rows") {
            let m = try httpGet(port: r.port, path: "/metrics").body
            return TestMetrics.value(m, "outbox_relay_rows_produced_total{\(labels),topic=\"\(topic)\"}") == 240
                && TestMetrics.value(m, "outbox_relay_rows_produced_total{\(labels),topic=\"\(other)\"}") == 60
                && TestMetrics.value(m, "outbox_relay_rows_deleted_total{\(labels)}") == 300
                && TestMetrics.value(m, "outbox_relay_backlog_rows{\(labels)}") == 0
                // Every acknowledgement timed once, on librdkafka's broker thread.
                && TestMetrics.value(m, "outbox_relay_produce_to_ack_seconds_count{\(labels)}") == 300
        }
        let metrics = try httpGet(port: r.port, path: "/metrics").body
        for name in ["outbox_relay_commit_to_ack_seconds_bucket", "outbox_relay_batch_rows", "outbox_relay_in_flight_rows",
                     "outbox_relay_shards_held{\(labels)} 256", "outbox_relay_live_replicas", "outbox_relay_oldest_row_age_seconds",
                     "outbox_relay_db_statement_duration_seconds_bucket", "outbox_relay_dead_letters{\(labels)} 0",
                     "outbox_relay_build_info{", "outbox_relay_ready{\(labels)} 1",
                     // Buckets that resolve millisecond latencies (the defaults began at 5 ms).
                     "outbox_relay_commit_to_ack_seconds_bucket{\(labels),le=\"0.001\"}",
                     "# TYPE outbox_relay_produce_to_ack_seconds histogram",
                     "outbox_relay_produce_to_ack_seconds_bucket{\(labels),le=\"0.0005\"}",
                     "outbox_relay_produce_to_ack_seconds_bucket{\(labels),le=\"+Inf\"} 300"] {
            #expect(metrics.contains(name), "missing \(name)")
        }

        // Broker paused: unready, saying why; resumed: ready again.
        broker.pause()
        try await TestEnvironment.eventually("unready while the broker is paused", timeout: 30) {
            let res = try httpGet(port: r.port, path: "/readyz")
            return res.status == 503 && res.body.contains("no broker answered")
        }
        #expect(try httpGet(port: r.port, path: "/healthz").status == 200, "liveness does not depend on the broker")
        broker.resume()
        let resumed = Date()
        try await TestEnvironment.eventually("ready again after the broker resumed", timeout: 30) {
            try httpGet(port: r.port, path: "/readyz").status == 200
        }
        FaultReport("readiness: broker paused, then resumed", bound: "/readyz 503 naming kafka while paused, 200 after",
                    inserted: 0, verification: Verification(), pending: 0, deadLettered: 0,
                    recoverySeconds: Date().timeIntervalSince(resumed), note: "recovery = resume to /readyz 200").write()
        try await r.stop()
    }

    @Test func statusJSONMatchesTheTables() async throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) SELECT 'status-a', 'k', 'v' FROM generate_series(1, 7)")
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) SELECT 'status-b', 'k', 'v' FROM generate_series(1, 3)")
        let p = try RelayProcess(["status", "--json", "--table", table.description, "--database-url", TestEnvironment.databaseURL])
        p.process.waitUntilExit()
        #expect(p.process.terminationStatus == 0)
        let status = try JSONDecoder().decode(OutboxStatus.self, from: Data(p.output.utf8))
        #expect(status.backlog == 10)
        #expect(status.topics.map { "\($0.topic)=\($0.rows)" } == ["status-a=7", "status-b=3"])
        #expect(status.shardCount == 256)
        #expect(status.deadLetters == 0)
        #expect(status.unownedShards == 256)
    }
}
