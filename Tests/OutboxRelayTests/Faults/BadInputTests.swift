import Foundation
import Kafka
import OutboxRelay
import PGClient
import Testing

/// Bad rows and bad settings: an error naming the row or setting; other keys keep flowing;
/// nothing is lost (a bad row ends in the dead-letter table with its reason).
@Suite(.serialized) struct BadInputTests {
    @Test func badRowsAreDeadLetteredWhileOtherKeysFlow() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        var config = TestEnvironment.configuration(table: table)
        config.kafkaProperties = [("message.max.bytes", "10000")]
        config.retryBackoffMillis = 50
        let deadLetterTopic = try TestEnvironment.topics(1)[0]
        config.deadLetterTopic = deadLetterTopic
        let relay = try await RunningRelay.start(config)
        let conn = try TestEnvironment.connect()
        func insert(_ topic: String, _ key: String?, _ value: [UInt8]?, _ headers: String? = nil) throws -> Int64 {
            try conn.query("INSERT INTO \(table.sql) (topic, key, value, headers) VALUES ($1, $2, $3, $4::text::jsonb) RETURNING id", [
                .text(topic), .bytea(key.map { Array($0.utf8) }), .bytea(value), headers.map { .text($0) } ?? .null(oid: PGType.text),
            ]).int64(0, 0)
        }
        let a1 = try insert(topic, "a", Array("first".utf8))
        let oversized = try insert(topic, "a", [UInt8](repeating: 0x41, count: 20_000))
        let a3 = try insert(topic, "a", Array("third".utf8))
        let badTopic = try insert("bad topic name!", "b", Array("x".utf8))
        let typed = try insert(topic, "c", Array("typed".utf8), #"{"n": 1, "flag": true, "gone": null, "s": "text"}"#)
        let manyHeaders = (0..<100).map { "\"h\($0)\": \"v\($0) \\u00e9\\t\\\"q\\\"\"" }.joined(separator: ", ")
        let many = try insert(topic, "c", Array("many".utf8), "{\(manyHeaders)}")
        // Headers that are not a JSON object are refused by the table itself, naming the constraint.
        #expect {
            try conn.query("INSERT INTO \(table.sql) (topic, key, value, headers) VALUES ($1, 'd', 'x', '[1, 2]')", [.text(topic)])
        } throws: { error in
            (error as? PGError)?.sqlState == "23514" && "\(error)".contains("headers_check")
        }
        #expect(throws: PGError.self) { try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ('', 'e', 'x')") }
        #expect(throws: PGError.self) { try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES (NULL, 'e', 'x')") }

        try await TestEnvironment.eventually("outbox drained", timeout: 60) { try TestEnvironment.count(table) == 0 }
        let stats = await relay.relay.statistics()
        try await relay.stop()

        let dead = try DeadLetterQueries(table: table).list(conn, filter: .init(), limit: 10)
        #expect(dead.map(\.id) == [oversized, badTopic].sorted(), "\(dead)")
        #expect(dead.first { $0.id == oversized }?.reason.contains("bad row") == true)
        #expect(dead.allSatisfy { !$0.reason.isEmpty && $0.errorCode != nil })
        let v = try Verification.verify(topics: [topic], expectedIds: [a1, a3, typed, many])
        #expect(v.lost.count == 0 && v.duplicates == 0 && v.orderInversions == 0, "\(v)")
        // Non-string header values are sent as their JSON text; JSON null as a null header value.
        let t = try #require(v.messagesById[typed])
        #expect(t.header("n") == "1")
        #expect(t.header("flag") == "true")
        #expect(t.header("s") == "text")
        #expect(t.headers.contains { $0.name == "gone" && $0.value == nil })
        let m = try #require(v.messagesById[many])
        #expect(m.headers.count == 101, "100 headers and outbox-id")
        #expect(m.header("h7") == "v7 é\t\"q\"")
        #expect(stats.deadLettered == 2)
        // The dead-letter topic gets a copy with the reason (the oversized row cannot be copied:
        // the same size limit applies; the table keeps it).
        let copies = try KafkaTopicReader.readAll(topic: deadLetterTopic, configuration: TestEnvironment.kafka)
        let copy = try #require(copies.first { $0.header(ClaimedRow.idHeader) == String(badTopic) })
        #expect(copy.header("outbox-original-topic") == "bad topic name!")
        #expect(copy.header("outbox-dead-letter-reason")?.isEmpty == false)
        let left = try leftovers(table)
        FaultReport("bad rows: value above message.max.bytes, invalid topic name, typed and 100 header values, non-object headers",
                    bound: "only the bad rows dead-lettered (with reason), other keys and later rows of the key flow, lost 0",
                    inserted: 6, verification: v, pending: left.pending, deadLettered: left.deadLettered,
                    note: "non-object headers, empty and NULL topics are refused at INSERT by the table's constraints").write()
    }

    @Test func aDeadLetterCanBeRequeuedAndIsThenDelivered() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        var config = TestEnvironment.configuration(table: table)
        config.kafkaProperties = [("message.max.bytes", "10000")]
        let conn = try TestEnvironment.connect()
        let id = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'k', $2) RETURNING id",
                                [.text(topic), .bytea([UInt8](repeating: 1, count: 20_000))]).int64(0, 0)
        let relay = try await RunningRelay.start(config)
        let queries = DeadLetterQueries(table: table)
        try await TestEnvironment.eventually("dead-lettered") { try queries.count(conn) == 1 }
        try await relay.stop()
        // With a larger limit the requeued row goes through, carrying its original id.
        config.kafkaProperties = [("message.max.bytes", "100000")]
        #expect(try queries.requeue(conn, filter: .init(ids: [id])) == 1)
        #expect(try queries.count(conn) == 0)
        let again = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("requeued row relayed") { try TestEnvironment.count(table) == 0 }
        try await again.stop()
        let messages = try KafkaTopicReader.readAll(topic: topic, configuration: TestEnvironment.kafka)
        #expect(messages.count == 1)
        #expect(messages.first?.header("outbox-requeued-from") == String(id))
        #expect(messages.first?.value?.count == 20_000)
    }

    @Test func aUserWithoutDeletePrivilegeIsRefusedBeforeProducing() async throws {
        let table = try TestEnvironment.migratedTable()
        let role = "relay_nodelete_\(UUID().uuidString.prefix(6).lowercased())"
        let admin = try TestEnvironment.connect()
        try admin.executeScript("""
            CREATE ROLE \(role) LOGIN;
            GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO \(role);
            GRANT DELETE ON \(table.replicasSQL) TO \(role);
            """)
        try admin.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ('never-produced', 'k', 'v')")
        var config = TestEnvironment.configuration(table: table)
        config.databaseURL = TestEnvironment.databaseURL.replacingOccurrences(of: "postgres@", with: "\(role)@")
        do {
            let relay = try Relay(configuration: config, logger: TestEnvironment.logger)
            try await relay.start()
            Issue.record("the relay started without DELETE privilege")
        } catch {
            #expect("\(error)".contains("lacks DELETE on \(table.sql)"), "\(error)")
            #expect("\(error)".contains("GRANT DELETE"), "\(error)")
        }
        #expect(try TestEnvironment.count(table) == 1, "nothing was produced or deleted")
    }

    /// A password in the database URL and a SASL password, at debug level, through connection
    /// failures: neither appears anywhere in the output.
    @Test func secretsNeverAppearInOutput() async throws {
        let table = try TestEnvironment.migratedTable()
        let dbSecret = "pg-Secret-\(UUID().uuidString.prefix(8))"
        let saslSecret = "sasl-Secret-\(UUID().uuidString.prefix(8))"
        // 1. A database that refuses the connection, password in the URL.
        let refused = try RelayProcess(["run", "--log-level", "trace", "--table", table.description,
                                        "--database-url", "postgresql://relay:\(dbSecret)@127.0.0.1:1/app?connect_timeout=2",
                                        "--brokers", TestEnvironment.brokers])
        refused.process.waitUntilExit()
        // 2. A running relay whose broker connection fails SASL, with the secrets in the
        //    environment and a password-bearing URL (the trust-auth server ignores the password).
        let url = TestEnvironment.databaseURL.replacingOccurrences(of: "postgres@", with: "postgres:\(dbSecret)@")
        let running = try RelayProcess(["run", "--log-level", "trace", "--table", table.description,
                                        "--kafka-property", "debug=broker,security,conf",
                                        "--message-timeout-ms", "2000", "--statement-timeout-ms", "1000", "--lease-duration-ms", "6000"],
                                       environment: ["OUTBOX_DATABASE_URL": url, "OUTBOX_BROKERS": TestEnvironment.brokers,
                                                     "OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                                     "OUTBOX_KAFKA_SASL_MECHANISM": "PLAIN",
                                                     "OUTBOX_KAFKA_SASL_USERNAME": "relay",
                                                     "OUTBOX_KAFKA_SASL_PASSWORD": saslSecret])
        try TestEnvironment.connect().query("INSERT INTO \(table.sql) (topic, key, value) VALUES ('secret-test', 'k', 'v')")
        try await TestEnvironment.eventually("the relay reports broker trouble") {
            running.output.contains("SASL") || running.output.contains("sasl") || running.output.contains("Disconnected")
        }
        let pid = running.pid
        try await TestEnvironment.eventually("relay registered") {
            try TestEnvironment.connect().query("SELECT count(*) FROM \(table.replicasSQL) WHERE pid = $1", [.int4(pid)]).int64(0, 0) == 1
        }
        // 3. The same secrets from a configuration file and from *_FILE variables, with the
        //    endpoints read while the broker refuses the SASL handshake.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("secrets-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "\(url)\n".write(toFile: dir + "/db-url", atomically: true, encoding: .utf8)
        try """
            table = \(table.description)
            lease-duration-ms = 6000
            message-timeout-ms = 2000
            statement-timeout-ms = 1000
            kafka.security.protocol = SASL_PLAINTEXT
            kafka.sasl.mechanism = PLAIN
            kafka.sasl.username = relay
            kafka.sasl.password = \(saslSecret)
            """.write(toFile: dir + "/relay.conf", atomically: true, encoding: .utf8)
        let fromFiles = try RelayProcess(["run", "--log-level", "trace", "--config", dir + "/relay.conf"],
                                         environment: ["OUTBOX_DATABASE_URL_FILE": dir + "/db-url", "OUTBOX_BROKERS": TestEnvironment.brokers])
        var port = 0
        try await TestEnvironment.eventually("endpoints listening") {
            port = fromFiles.output.components(separatedBy: "http.port=").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) } ?? 0
            return port > 0
        }
        var endpointBodies: [String] = []
        try await TestEnvironment.eventually("unready: no broker accepts the SASL handshake") {
            let ready = try httpGet(port: port, path: "/readyz")
            endpointBodies = [ready.body, try httpGet(port: port, path: "/metrics").body, try httpGet(port: port, path: "/healthz").body]
            return ready.status == 503 && ready.body.contains("kafka")
        }
        fromFiles.terminate()
        // 4. status and dead-letter commands with the password-bearing URL.
        let status = try RelayProcess(["status", "--json", "--table", table.description, "--database-url", url])
        status.process.waitUntilExit()
        let deadLetters = try RelayProcess(["dead-letter", "list", "--table", table.description, "--database-url", url])
        deadLetters.process.waitUntilExit()
        running.terminate()
        let outputs = [refused.output, running.output, status.output, fromFiles.output, deadLetters.output] + endpointBodies
        #expect(refused.process.terminationStatus != 0)
        #expect(refused.output.contains("cannot connect to the database"), "\(refused.output.suffix(500))")
        #expect(status.process.terminationStatus == 0)
        #expect(running.output.count > 1000, "debug output was captured")
        for (i, text) in outputs.enumerated() {
            #expect(!text.contains(dbSecret), "output \(i) leaks the database password")
            #expect(!text.contains(saslSecret), "output \(i) leaks the SASL password")
        }
    }
}
