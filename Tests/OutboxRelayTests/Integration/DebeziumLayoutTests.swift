import Foundation
import Kafka
import OutboxRelay
import PGClient
import Testing

/// `--layout debezium`: a table created exactly as Debezium's documentation shows, written by the
/// application's plain INSERT, relayed as Debezium's outbox EventRouter would route it.
@Suite(.serialized) struct DebeziumLayoutTests {
    /// Debezium's documented outbox table (PostgreSQL), in a schema of its own.
    func debeziumTable() throws -> (OutboxTable, String) {
        let schema = "dbz_\(UUID().uuidString.prefix(8).lowercased())"
        let conn = try TestEnvironment.connect()
        try conn.executeScript("""
            CREATE SCHEMA \(schema);
            CREATE TABLE \(schema).outbox (
                id uuid NOT NULL PRIMARY KEY,
                aggregatetype varchar(255) NOT NULL,
                aggregateid varchar(255) NOT NULL,
                type varchar(255) NOT NULL,
                payload jsonb
            );
            """)
        return (try OutboxTable("\(schema).outbox"), schema)
    }

    /// What Debezium's router makes of a row, by its documented defaults and the given options.
    struct Expected {
        let topic: String
        let key: String
        let value: String?
        let headers: [String: String]
    }

    @Test func aDebeziumTableIsAdoptedAndRoutedAsTheEventRouterDoes() async throws {
        var (table, _) = try debeziumTable()
        let conn = try TestEnvironment.connect()
        let suffix = UUID().uuidString.prefix(6).lowercased()
        let types = ["Order\(suffix)", "Customer\(suffix)"]
        for t in types { try KafkaAdmin.createTopic("outbox.event.\(t)", partitions: 3, configuration: TestEnvironment.kafka) }

        // The application's INSERT, unchanged: rows written before the relay adopted the table too.
        var expected: [String: Expected] = [:]  // by event id
        var order: [String: [String]] = [:]     // aggregate id → event ids in insert order
        func insert(_ i: Int) throws {
            let id = UUID().uuidString.lowercased()
            let type = types[i % 2]
            let aggregate = "agg-\(i % 7)"
            let payload = i % 25 == 0 ? nil : "{\"n\": \(i), \"text\": \"a b\\tc\", \"items\": [1, 2]}"
            try conn.query("""
                INSERT INTO \(table.sql) (id, aggregatetype, aggregateid, type, payload) VALUES ($1::uuid, $2, $3, $4, $5::jsonb)
                """, [.text(id), .text(type), .text(aggregate), .text("Event\(i % 3)"), payload.map { .text($0) } ?? .null(oid: PGType.text)])
            let rendered = try payload.map { try conn.query("SELECT $1::jsonb::text", [.text($0)]).string(0, 0) ?? "" }
            expected[id] = Expected(topic: "outbox.event.\(type)", key: aggregate, value: rendered,
                                    headers: ["id": id, "eventType": "Event\(i % 3)"])
            order[aggregate, default: []].append(id)
        }
        for i in 0..<20 { try insert(i) }

        let routing = try OutboxLayout.parse("debezium", options: [("table.fields.additional.placement", "type:header:eventType")])
        table.layout = routing
        try Migration.run(on: conn, table: table, shards: 16)
        try Migration.run(on: conn, table: table)  // idempotent
        #expect(try SchemaValidation.differences(conn, table: table) == [], "validate finds nothing to fix")
        _ = try SchemaCheck.check(conn, table: table)

        var config = TestEnvironment.configuration(table: table)
        config.layout = routing
        let relay = try await RunningRelay.start(config)
        // More application transactions while the relay runs: single rows and multi-row ones.
        for i in 20..<120 { try insert(i) }
        try conn.executeScript("BEGIN")
        for i in 120..<300 { try insert(i) }
        try conn.executeScript("COMMIT")
        let status = try OutboxStatus.read(conn, table: table)
        #expect(status.backlog >= 0)
        try await TestEnvironment.eventually("outbox drained") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()

        var messages: [ConsumedMessage] = []
        for t in types { messages += try KafkaTopicReader.readAll(topic: "outbox.event.\(t)", configuration: TestEnvironment.kafka) }
        #expect(messages.count == 300)
        var seen: [String: ConsumedMessage] = [:]
        for m in messages {
            guard let id = m.header("id") else { Issue.record("a message without the id header"); continue }
            #expect(seen[id] == nil, "event \(id) twice")
            seen[id] = m
        }
        for (id, e) in expected {
            guard let m = seen[id] else { Issue.record("event \(id) missing"); continue }
            #expect(m.topic == e.topic)
            #expect(m.key.map { String(decoding: $0, as: UTF8.self) } == e.key)
            #expect(m.value.map { String(decoding: $0, as: UTF8.self) } == e.value, "event \(id)")
            for (name, value) in e.headers { #expect(m.header(name) == value, "header \(name) of \(id)") }
            #expect(m.header("outbox-id") != nil)
        }
        // Per aggregate (the key), Kafka order is insert order.
        for (aggregate, ids) in order {
            let delivered = messages.filter { $0.key == Array(aggregate.utf8) }
                .sorted { $0.offset < $1.offset }.compactMap { $0.header("id") }
            #expect(Set(messages.filter { $0.key == Array(aggregate.utf8) }.map(\.partition)).count <= types.count,
                    "one partition per topic for a key")
            for t in types {
                let inTopic = messages.filter { $0.key == Array(aggregate.utf8) && $0.topic == "outbox.event.\(t)" }
                    .sorted { $0.offset < $1.offset }.compactMap { $0.header("id") }
                #expect(inTopic == ids.filter { expected[$0]?.topic == "outbox.event.\(t)" }, "order of \(aggregate) in \(t)")
            }
            _ = delivered
        }
    }

    @Test func optionsRouteTopicsExpandPayloadsAndUnknownOptionsAreRefused() async throws {
        var (table, _) = try debeziumTable()
        let conn = try TestEnvironment.connect()
        let suffix = UUID().uuidString.prefix(6).lowercased()
        try KafkaAdmin.createTopic("\(suffix).Invoice.events", partitions: 2, configuration: TestEnvironment.kafka)
        let layout = try OutboxLayout.parse("debezium", options: [
            ("route.topic.replacement", "\(suffix).${routedByValue}.events"),
            ("table.expand.json.payload", "true"),
            ("table.fields.additional.placement", "type:header, aggregatetype:header:aggType"),
        ])
        table.layout = layout
        try Migration.run(on: conn, table: table, shards: 8)
        let id1 = UUID().uuidString.lowercased(), id2 = UUID().uuidString.lowercased()
        try conn.executeScript("""
            INSERT INTO \(table.sql) (id, aggregatetype, aggregateid, type, payload) VALUES
              ('\(id1)', 'Invoice', 'inv-1', 'InvoiceCreated', '{"amount": 12.5, "lines": [ {"sku": "a b"} ]}'),
              ('\(id2)', 'Invoice', 'inv-1', 'InvoiceDeleted', NULL);
            """)
        var config = TestEnvironment.configuration(table: table)
        config.layout = layout
        let relay = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("outbox drained") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        let messages = try KafkaTopicReader.readAll(topic: "\(suffix).Invoice.events", configuration: TestEnvironment.kafka)
            .sorted { $0.offset < $1.offset }
        #expect(messages.map { $0.header("id") } == [id1, id2])
        #expect(messages.first?.value.map { String(decoding: $0, as: UTF8.self) } == "{\"lines\":[{\"sku\":\"a b\"}],\"amount\":12.5}",
                "compact JSON, as the expanded payload through JsonConverter (jsonb keeps its own key order)")
        #expect(messages.last?.value == nil, "a NULL payload is a tombstone")
        #expect(messages.first?.header("type") == "InvoiceCreated" && messages.first?.header("aggType") == "Invoice")

        // Refused by name: options the relay does not implement, placements other than header.
        #expect { try OutboxLayout.parse("debezium", options: [("route.tombstone.on.empty.payload", "true")]) } throws: {
            "\($0)".contains("route.tombstone.on.empty.payload")
        }
        #expect { try OutboxLayout.parse("debezium", options: [("table.fields.additional.placement", "type:envelope:eventType")]) } throws: {
            "\($0)".contains("envelope")
        }
        #expect { try OutboxLayout.parse("native", options: [("route.by.field", "x")]) } throws: { "\($0)".contains("--layout") }
        #expect(throws: RelayError.self) { try Settings.resolve(flags: ["layout": "debezium"], debeziumOptions: ["route.topic.regex=(.*)"], environment: [:]) }
        let fromEnvironment = try Settings.resolve(flags: ["layout": "debezium"], environment: ["OUTBOX_DEBEZIUM_ROUTE_BY_FIELD": "type"])
        #expect(fromEnvironment.layout == .debezium({ var r = DebeziumRouting(); r.routeByField = "type"; return r }()))

        // The native layout against a Debezium-migrated table is refused at start, naming the layout.
        let native = TestEnvironment.configuration(table: try OutboxTable(table.description))
        await #expect { _ = try await RunningRelay.start(native) } throws: { "\($0)".contains("--layout debezium") }
    }

    /// A row the broker refuses is dead-lettered with the message it was sent as (topic, key,
    /// value, headers), and its key's later rows still flow.
    @Test func aRefusedEventIsDeadLetteredAsItsMessage() async throws {
        var (table, _) = try debeziumTable()
        let conn = try TestEnvironment.connect()
        let type = "Big\(UUID().uuidString.prefix(6).lowercased())"
        try KafkaAdmin.createTopic("outbox.event.\(type)", partitions: 1, configuration: TestEnvironment.kafka)
        table.layout = try OutboxLayout.parse("debezium", options: [])
        try Migration.run(on: conn, table: table, shards: 4)
        let big = UUID().uuidString.lowercased(), small = UUID().uuidString.lowercased()
        try conn.query("""
            INSERT INTO \(table.sql) (id, aggregatetype, aggregateid, type, payload) VALUES
              ($1::uuid, $3, 'k', 'T', jsonb_build_object('blob', repeat('x', 20000))),
              ($2::uuid, $3, 'k', 'T', '{"ok": true}')
            """, [.text(big), .text(small), .text(type)])
        var config = TestEnvironment.configuration(table: table)
        config.layout = table.layout
        config.kafkaProperties = [("message.max.bytes", "10000")]
        let relay = try await RunningRelay.start(config)
        try await TestEnvironment.eventually("outbox drained") { try TestEnvironment.count(table) == 0 }
        try await relay.stop()
        let dead = try conn.query("SELECT topic, convert_from(key, 'UTF8'), headers ->> 'id', length(value) FROM \(table.deadLetterSQL)")
        #expect(dead.rowCount == 1)
        #expect(dead.string(0, 0) == "outbox.event.\(type)" && dead.string(0, 1) == "k" && dead.string(0, 2) == big)
        #expect((try? dead.int32(0, 3)) ?? 0 > 20000)
        let messages = try KafkaTopicReader.readAll(topic: "outbox.event.\(type)", configuration: TestEnvironment.kafka)
        #expect(messages.map { $0.header("id") } == [small])
    }
}
