import Foundation
import Kafka
@testable import OutboxRelay
import PGClient
import Testing

/// Hostile input and day-two operations (issue 12): each case failed before its fix.
@Suite(.serialized) struct HostileInputTests {
    /// A relay whose poll timer is 10 minutes away, holding every shard: only NOTIFY can wake it.
    func startWithoutPolling(_ table: OutboxTable) async throws -> RunningRelay {
        var config = TestEnvironment.configuration(table: table, pollMillis: 600_000)
        config.heartbeatIntervalMillis = 1_000
        let relay = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("shards held") { await relay.relay.statistics().shardsHeld == 256 }
        return relay
    }

    func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        let p = try RelayProcess(arguments, environment: environment)
        p.process.waitUntilExit()
        return (p.process.terminationStatus, p.output)
    }

    /// libpq echoes parts of a URL it cannot parse; the relay refuses such URLs itself, and every
    /// password it learns is removed by value from whatever it prints.
    @Test(arguments: [("postgresql://relay:Sec%zzret@127.0.0.1:5/db", ["Sec%zzret", "zzret"]),
                      ("postgresql://relay:pa/ss9word@127.0.0.1:5/db", ["pa/ss9word", "ss9word", "\"pa\""]),
                      ("host=127.0.0.1 port=5 user=relay password='se cr3t pass' dbname=db", ["se cr3t pass", "cr3t"]),
                      ("postgresql://relay:s3cr3tpw@127.0.0.1:1/db?sslmode=bogus", ["s3cr3tpw"])])
    func passwordsAreNeverEchoed(url: String, secrets: [String]) throws {
        let (status, output) = try run(["status", "--database-url", url])
        #expect(status != 0)
        #expect(output.contains("outbox-relay: error:"), "\(output)")
        for s in secrets { #expect(!output.contains(s), "the password leaks: \(output)") }
    }

    @Test func knownSecretsAreRemovedByValueWhereverTheyAppear() throws {
        defer { Secrets.reset() }
        #expect(throws: PGError.self) { try ConnectionString.inspect("postgresql://u:Sec%zzret@h/db") }
        try ConnectionString.inspect("host=h password='qu ote\\'d pw' dbname=x")
        #expect(Redaction.redact("boom: qu ote'd pw at the end") == "boom: *** at the end")
        #expect(Redaction.redact("code Sec%zzret and zzret") == "code *** and zzret", "the raw form is registered too")
    }

    /// A valid non-ASCII table name whose channel would be cut inside a character: migrate works,
    /// application INSERTs work, and the trigger's channel is the one the relay listens on.
    @Test func aLongNonASCIITableNameKeepsInsertsAndNotifyWorking() async throws {
        let name = String(repeating: "a", count: 42) + "über"
        let table = try OutboxTable("public.\(name)")
        #expect(table.channel.utf8.count <= 63)
        let conn = try TestEnvironment.connect()
        try Migration.run(on: conn, table: table)
        let topic = try TestEnvironment.topics(1)[0]
        let relay = try await startWithoutPolling(table)
        let id = try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'k', 'v') RETURNING id", [.text(topic)]).int64(0, 0)
        try await TestEnvironment.eventually("woken by NOTIFY, not the 10-minute poll", timeout: 20) { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        try conn.executeScript("DROP TABLE \(table.sql) CASCADE")
        let v = try Verification.verify(topics: [topic], expectedIds: [id])
        #expect(v.lost.isEmpty)
    }

    /// A table name that contains the function body's dollar-quote tag, a quote and a backslash
    /// cannot break out of migrate's quoting — also with standard_conforming_strings off.
    @Test func aHostileTableNameCannotEscapeQuoting() async throws {
        let name = "t$outbox_relay$x'\\y\(UUID().uuidString.prefix(4).lowercased())"
        let table = try OutboxTable(name)
        let conn = try TestEnvironment.connect()
        try conn.executeScript("SET standard_conforming_strings = off")
        try Migration.run(on: conn, table: table)
        let topic = try TestEnvironment.topics(1)[0]
        let relay = try await startWithoutPolling(table)
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'k', 'v')", [.text(topic)])
        try await TestEnvironment.eventually("relayed on the trigger's NOTIFY", timeout: 20) { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        let channel = try conn.query("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1)", [.text(table.notifyFunctionSQL + "()")]).string(0, 0) ?? ""
        #expect(channel.contains("pg_notify"), "the function body is whole: \(channel)")
    }

    @Test func deadLetterListShowsBinaryKeysAsHex() throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        try conn.executeScript("""
            INSERT INTO \(table.deadLetterSQL) (id, topic, key, created_at, attempts, reason)
            VALUES (7, 't', '\\xff00'::bytea, now(), 1, 'r'), (8, 't', 'plain', now(), 1, 'r')
            """)
        let (status, output) = try run(["dead-letter", "list", "--json", "--table", table.description, "--database-url", TestEnvironment.databaseURL])
        #expect(status == 0, "\(output)")
        #expect(output.contains(#""key":"ff00""#) && output.contains(#""keyEncoding":"hex""#), "\(output)")
        #expect(output.contains(#""key":"plain""#) && output.contains(#""keyEncoding":"utf8""#), "\(output)")
        let text = try run(["dead-letter", "list", "--table", table.description, "--database-url", TestEnvironment.databaseURL])
        #expect(text.output.contains("key=hex:ff00"), "\(text.output)")
    }

    /// A row may not forge its outbox-id: the relay's own header wins, once.
    @Test func aRowCannotSpoofItsOutboxId() throws {
        let conn = try TestEnvironment.connect()
        let result = try conn.execute(prepared: "fake_claim_spoof", """
            SELECT '1:1:'::text, 42::bigint, 7, 'orders', 'k'::bytea, 'v'::bytea, now(), $1::text, 0::bigint
            """, [.text(#"{"outbox-id": "999", "x": "1"}"#)])
        var scratch: [UInt8] = []
        var topics = OutboxQueries.TopicNames()
        let row = try OutboxQueries.row(result, 0, shape: MessageShape(), scratch: &scratch, topics: &topics)
        let ids: [String] = row.message.headerList.filter { $0.0 == ClaimedRow.idHeader }.map { String(decoding: $0.1 ?? [], as: UTF8.self) }
        #expect(ids == ["42"], "\(row.message.headerList)")
        #expect(row.message.headerList.contains { $0.0 == "x" })
    }

    /// A monitoring role with SELECT only can run `status` and `dead-letter list`; `purge` as a
    /// role without DELETE on the dead letters is refused naming the GRANT.
    @Test func aReadOnlyRoleGetsStatusAndPurgeNamesItsGrant() throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        let role = "ro_\(UUID().uuidString.prefix(8).lowercased())"
        try conn.executeScript("""
            CREATE ROLE \(role) LOGIN;
            GRANT USAGE ON SCHEMA public TO \(role);
            GRANT SELECT ON \(table.sql), \(table.deadLetterSQL), \(table.leasesSQL), \(table.replicasSQL), \(table.metaSQL) TO \(role);
            """)
        defer { try? conn.executeScript("DROP OWNED BY \(role); DROP ROLE \(role)") }
        let url = TestEnvironment.databaseURL.replacingOccurrences(of: "postgres@", with: "\(role)@")
        let status = try run(["status", "--table", table.description, "--database-url", url])
        #expect(status.status == 0, "\(status.output)")
        let list = try run(["dead-letter", "list", "--table", table.description, "--database-url", url])
        #expect(list.status == 0, "\(list.output)")
        let purge = try run(["dead-letter", "purge", "--all", "--table", table.description, "--database-url", url])
        #expect(purge.status != 0)
        #expect(purge.output.contains("lacks DELETE on \(table.deadLetterSQL)") && purge.output.contains("GRANT DELETE"), "\(purge.output)")
    }

    /// `consume` takes the same librdkafka pass-through as `run` (a bad one is refused, naming it)
    /// and streams the topic.
    @Test func consumeTakesKafkaPropertiesAndStreams() throws {
        let topic = try TestEnvironment.topics(1, partitions: 2)[0]
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        try conn.query("INSERT INTO \(table.sql) (topic, key, value) SELECT $1, convert_to('k' || i, 'UTF8'), 'v' FROM generate_series(1, 3) i", [.text(topic)])
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description))
        defer { relay.terminate() }
        let deadline = Date().addingTimeInterval(30)
        while try TestEnvironment.count(table) > 0, Date() < deadline { usleep(20_000) }
        let ok = try run(["consume", "--brokers", TestEnvironment.brokers, "--topic", topic, "--kafka-property", "client.id=consume-test"])
        #expect(ok.status == 0, "\(ok.output)")
        #expect(ok.output.split(separator: "\n").filter { $0.hasPrefix("topic=") }.count == 3, "\(ok.output)")
        let bad = try run(["consume", "--brokers", TestEnvironment.brokers, "--topic", topic], environment: ["OUTBOX_KAFKA_BOGUS_PROPERTY": "1"])
        #expect(bad.status != 0)
        #expect(bad.output.contains("bogus.property"), "\(bad.output)")
    }

    /// With --log-format json every line on stderr is one JSON object — librdkafka's own lines
    /// (the CONFWARN at start-up) included, routed through the relay's logger.
    @Test func jsonLogsAreJSONIncludingLibrdkafkasLines() async throws {
        let table = try TestEnvironment.migratedTable()
        let relay = try RelayProcess(RelayProcess.runArguments(table: table.description, extra: ["--log-format", "json"]))
        try await TestEnvironment.eventually("librdkafka's start-up line and the shards logged") {
            relay.output.contains("librdkafka:") && relay.output.contains("acquired shards")
        }
        #expect(relay.terminate() == 0)
        let lines = relay.output.split(separator: "\n")
        #expect(!lines.isEmpty)
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object != nil, "not a JSON object: \(line.prefix(200))")
            #expect(object?["time"] as? String != nil && object?["source"] as? String != nil, "\(line.prefix(200))")
        }
        #expect(lines.contains { $0.contains("\"kafka.facility\":\"CONFWARN\"") }, "librdkafka's CONFWARN went through the logger")
        // Typed values: counts are JSON numbers, not strings.
        let objects = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let acquired = try #require(objects.first { $0["message"] as? String == "acquired shards" })
        #expect(acquired["outbox.shards"] is NSNumber && !(acquired["outbox.shards"] is String), "\(acquired)")
        let stopped = try #require(objects.first { $0["message"] as? String == "relay stopped" })
        #expect((stopped["outbox.delivered"] as? NSNumber)?.intValue == 0, "\(stopped)")
    }

    @Test func versionNamesTheRelayAndLibrdkafka() throws {
        let (status, output) = try run(["--version"])
        #expect(status == 0)
        #expect(output.contains("outbox-relay \(RelayVersion.current)") && output.contains("librdkafka 2."), "\(output)")
    }
}
