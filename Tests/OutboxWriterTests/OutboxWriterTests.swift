import Foundation
import InMemoryTracing
import Kafka
import Logging
import NIOPosix
import OutboxWriter
import PostgresNIO
import Testing
import Tracing

/// OutboxWriter against the real PostgreSQL of `scripts/test`, with the table made by the relay's
/// own `migrate`, and the committed rows relayed to the real broker by the relay binary.
@Suite(.serialized) struct OutboxWriterTests {
    static let logger = Logger(label: "outbox-writer-test")

    @Test func rowsOfARolledBackTransactionNeverAppear() async throws {
        let table = try Env.migratedTable()
        try await Env.withConnection { conn in
            let writer = try OutboxWriter(table: table)
            try await conn.query("BEGIN", logger: Self.logger)
            let id = try await writer.enqueue(topic: "orders", key: "k", value: "v", on: conn, logger: Self.logger)
            #expect(id > 0)
            #expect(try await Env.count(conn, table) == 1, "visible inside its own transaction")
            try await conn.query("ROLLBACK", logger: Self.logger)
            #expect(try await Env.count(conn, table) == 0)
        }
    }

    @Test func committedRowsAreRelayedInEnqueueOrderWithHeaders() async throws {
        let table = try Env.migratedTable()
        let topic = "writer-\(UUID().uuidString.prefix(8).lowercased())"
        try KafkaAdmin.createTopic(topic, partitions: 3, configuration: Env.kafka)
        // 2 500 rows in one transaction: a single-row call, then a batch that spans three
        // statements (1 000 rows each), 10 keys, every 100th a tombstone.
        var batch: [OutboxMessage] = []
        for i in 1..<2_500 {
            batch.append(OutboxMessage(topic: topic, key: "key-\(i % 10)", value: i % 100 == 0 ? nil : "value-\(i)",
                                       headers: ["seq": "\(i)", "type": "OrderPaid"]))
        }
        var ids: [Int64] = []
        try await Env.withConnection { conn in
            let writer = try OutboxWriter(table: table)
            try await conn.query("BEGIN", logger: Self.logger)
            ids.append(try await writer.enqueue(topic: topic, key: [0xff, 0x00], value: Array("first".utf8),
                                                headers: ["seq": "0"], on: conn, logger: Self.logger))
            ids += try await writer.enqueue(batch, on: conn, logger: Self.logger)
            try await conn.query("COMMIT", logger: Self.logger)
        }
        #expect(ids.count == 2_500)
        #expect(ids == ids.sorted() && Set(ids).count == ids.count, "ids ascend in call order")

        let relay = try Env.startRelay(table: table)
        defer { relay.terminate(); relay.waitUntilExit() }
        try await Env.eventually("relayed") { try await Env.withConnection { try await Env.count($0, table) } == 0 }

        let messages = try KafkaTopicReader.readAll(topic: topic, configuration: Env.kafka)
        #expect(messages.count == 2_500)
        var bySeq: [Int: ConsumedMessage] = [:]
        for m in messages { if let s = m.header("seq").flatMap(Int.init) { bySeq[s] = m } }
        #expect(bySeq.count == 2_500)
        #expect(bySeq[0]?.key == [0xff, 0x00] && bySeq[0]?.value == Array("first".utf8))
        for i in 1..<2_500 {
            guard let m = bySeq[i] else { continue }
            #expect(m.key == Array("key-\(i % 10)".utf8))
            #expect(m.value == (i % 100 == 0 ? nil : Array("value-\(i)".utf8)), "row \(i)")
            #expect(m.header("type") == "OrderPaid")
            #expect(m.header("outbox-id") == "\(ids[i])")
        }
        // Per key, Kafka order is enqueue order.
        var lastSeqByKey: [String: Int] = [:]
        var inversions = 0
        for m in messages.sorted(by: { ($0.partition, $0.offset) < ($1.partition, $1.offset) }) {
            guard let key = m.key.map({ String(decoding: $0, as: UTF8.self) }), let s = m.header("seq").flatMap(Int.init) else { continue }
            if let last = lastSeqByKey[key], last > s { inversions += 1 }
            lastSeqByKey[key] = s
        }
        #expect(inversions == 0)
    }

    @Test func theCurrentTraceContextIsInjectedUnlessTheCallerSetIt() async throws {
        let table = try Env.migratedTable()
        let tracer = InMemoryTracer()
        let writer = try OutboxWriter(table: table, instrument: tracer)
        try await Env.withConnection { conn in
            let (spanTrace, traced, explicit): (String, Int64, Int64) = try await tracer.withSpan("checkout") { span in
                let a = try await writer.enqueue(topic: "orders", key: "k", value: "v", on: conn, logger: Self.logger)
                let b = try await writer.enqueue(topic: "orders", key: "k", value: "v",
                                                 headers: ["in-memory-trace-id": "chosen-by-the-app"], on: conn, logger: Self.logger)
                return (span.context.inMemorySpanContext?.traceID ?? "", a, b)
            }
            let untraced = try await writer.enqueue(topic: "orders", key: "k", value: "v", on: conn, logger: Self.logger)
            let rows = try await conn.query("SELECT id, headers::text FROM \(unescaped: writer.tableSQL) ORDER BY id", logger: Self.logger)
            var headers: [Int64: String?] = [:]
            for try await (id, h) in rows.decode((Int64, String?).self) { headers[id] = h }
            #expect(headers[traced]??.contains("\"in-memory-trace-id\": \"\(spanTrace)\"") == true, "\(headers)")
            #expect(headers[explicit]??.contains("chosen-by-the-app") == true, "\(headers)")
            #expect(headers[untraced] == .some(nil), "no span, no headers: \(headers)")
        }
        // No instrument: nothing injected, even inside a span.
        let disabled = try OutboxWriter(table: table, instrument: nil)
        try await Env.withConnection { conn in
            let id = try await tracer.withSpan("checkout") { _ in
                try await disabled.enqueue(topic: "orders", key: "k", value: "v", on: conn, logger: Self.logger)
            }
            let rows = try await conn.query("SELECT headers IS NULL FROM \(unescaped: disabled.tableSQL) WHERE id = \(id)", logger: Self.logger)
            for try await isNull in rows.decode(Bool.self) { #expect(isNull) }
        }
    }

    @Test func badInputIsRefusedWithTypedErrorsNamingWhatIsAtFault() async throws {
        #expect { try OutboxWriter(table: "a.b.c") } throws: { ($0 as? OutboxWriterError)?.kind == .invalidTableName }
        #expect(try OutboxWriter(table: "App.my \"box").tableSQL == "\"App\".\"my \"\"box\"", "case kept, quotes doubled, as the relay's --table")
        #expect(try OutboxWriter(table: "outbox").tableSQL == "\"public\".\"outbox\"")
        let table = try Env.migratedTable()
        try await Env.withConnection { conn in
            let writer = try OutboxWriter(table: table)
            let spoof = OutboxMessage(topic: "orders", key: "k", value: "v", headers: ["Outbox-Id": "1"])
            let ok = OutboxMessage(topic: "orders", key: "k", value: "v")
            await #expect { try await writer.enqueue([ok, spoof], on: conn, logger: Self.logger) } throws: { error in
                let e = error as? OutboxWriterError
                return e?.kind == .invalidMessage && e?.message.contains("message 1") == true && e?.message.contains("Outbox-Id") == true
            }
            await #expect { try await writer.enqueue(topic: "bad topic!", key: "k", value: "v", on: conn, logger: Self.logger) } throws: { error in
                (error as? OutboxWriterError)?.message.contains("bad topic!") == true
            }
            #expect(try await Env.count(conn, table) == 0, "nothing written when a message is refused")
            let missing = try OutboxWriter(table: "no_such_schema.outbox")
            await #expect { try await missing.enqueue(topic: "orders", key: "k", value: "v", on: conn, logger: Self.logger) } throws: { error in
                let e = error as? OutboxWriterError
                return e?.kind == .database && e?.sqlState == "42P01" && e?.message.contains("\"no_such_schema\".\"outbox\"") == true
                    && e?.message.contains("migrate") == true
            }
        }
    }
}

/// The services `scripts/test` started (no fallbacks: a test fails when they are missing).
enum Env {
    static func value(_ name: String) -> String {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else {
            fatalError("\(name) is not set: run the tests with scripts/test")
        }
        return v
    }
    static var databaseURL: String { value("OUTBOX_TEST_DATABASE_URL") }
    static var brokers: String { value("OUTBOX_TEST_BROKERS") }
    static var relayBinary: String { value("OUTBOX_RELAY_BINARY") }
    static var kafka: KafkaConfiguration { KafkaConfiguration([("bootstrap.servers", brokers)]) }

    /// A new outbox table made by `outbox-relay migrate`; returns its name.
    static func migratedTable() throws -> String {
        let name = "writer_\(UUID().uuidString.prefix(8).lowercased())"
        let p = try run([relayBinary, "migrate", "--database-url", databaseURL, "--table", name])
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw TestFailure("migrate failed for \(name)") }
        return name
    }

    static func startRelay(table: String) throws -> Process {
        try run([relayBinary, "run", "--database-url", databaseURL, "--brokers", brokers, "--table", table,
                 "--http-port", "0", "--http-host", "127.0.0.1", "--poll-interval-ms", "200"])
    }

    static func run(_ argv: [String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        return p
    }

    static func withConnection<T>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let url = URLComponents(string: databaseURL)!
        let config = PostgresConnection.Configuration(
            host: url.host ?? "127.0.0.1", port: url.port ?? 5432, username: url.user ?? "postgres",
            password: url.password, database: String(url.path.dropFirst()), tls: .disable)
        let conn = try await PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(),
                                                        configuration: config, id: 1, logger: OutboxWriterTests.logger)
        do {
            let result = try await body(conn)
            try await conn.close()
            return result
        } catch {
            try? await conn.close()
            throw error
        }
    }

    static func count(_ conn: PostgresConnection, _ table: String) async throws -> Int64 {
        let rows = try await conn.query("SELECT count(*) FROM \(unescaped: "\"public\".\"\(table)\"")", logger: OutboxWriterTests.logger)
        for try await n in rows.decode(Int64.self) { return n }
        return -1
    }

    static func eventually(_ what: String, timeout: Double = 60, _ condition: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try await condition() { return }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        Issue.record("timed out waiting for: \(what)")
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
