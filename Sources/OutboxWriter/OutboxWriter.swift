import Foundation
import Logging
import PostgresNIO
import Tracing

/// Writes outbox rows for outbox-relay **inside the application's own transaction**, over
/// postgres-nio — the connection a Vapor or Hummingbird application already holds. A row written
/// in a transaction that rolls back never exists; one written in a committed transaction is
/// relayed to Kafka. Nothing here links libpq or librdkafka.
///
/// ```swift
/// let outbox = try OutboxWriter(table: "app.outbox")
/// try await client.withTransaction(logger: logger) { connection in
///     try await connection.query("UPDATE orders SET state = 'paid' WHERE id = \(orderID)", logger: logger)
///     try await outbox.enqueue(topic: "orders", key: orderID.uuidString, value: eventJSON,
///                              headers: ["type": "OrderPaid"], on: connection, logger: logger)
/// }
/// ```
///
/// Rows of one key reach Kafka in the order they were enqueued (the relay's per-key order is id
/// order, and ids are drawn in call order, batch entries left to right). When a tracer is active,
/// the current trace context is injected as headers (`traceparent` with swift-otel) unless the
/// caller set that header: the relay's span then continues the application's trace.
public struct OutboxWriter: Sendable {
    /// The table as quoted SQL (`"app"."outbox"`).
    public let tableSQL: String
    let instrument: (any Instrument)?

    /// Most rows one INSERT carries (4 parameters per row; PostgreSQL allows 65 535 parameters).
    public static let maxRowsPerStatement = 1_000

    /// - Parameters:
    ///   - table: the outbox table `migrate` created, written as for the relay's `--table`:
    ///     `TABLE` or `SCHEMA.TABLE` (default schema `public`), case kept; each part is quoted.
    ///   - instrument: where trace context comes from; the process's `InstrumentationSystem` by
    ///     default. `nil` never injects.
    public init(table: String = "outbox", instrument: (any Instrument)? = InstrumentationSystem.instrument) throws(OutboxWriterError) {
        self.tableSQL = try Self.quotedTable(table)
        self.instrument = instrument
    }

    /// Writes one row on `connection`, in whatever transaction it is in; returns the row's id
    /// (also its `outbox-id` header in Kafka).
    @discardableResult
    public func enqueue(topic: String, key: [UInt8]?, value: [UInt8]?, headers: [String: String] = [:],
                        on connection: PostgresConnection, logger: Logger) async throws(OutboxWriterError) -> Int64 {
        try await enqueue([OutboxMessage(topic: topic, key: key, value: value, headers: headers)], on: connection, logger: logger)[0]
    }

    /// Text key and value, written as their UTF-8 bytes.
    @discardableResult
    public func enqueue(topic: String, key: String?, value: String?, headers: [String: String] = [:],
                        on connection: PostgresConnection, logger: Logger) async throws(OutboxWriterError) -> Int64 {
        try await enqueue(topic: topic, key: key.map { Array($0.utf8) }, value: value.map { Array($0.utf8) },
                          headers: headers, on: connection, logger: logger)
    }

    /// Writes `messages` in order (ids ascending in array order), in as few statements as
    /// possible; returns their ids in the same order.
    @discardableResult
    public func enqueue(_ messages: [OutboxMessage], on connection: PostgresConnection,
                        logger: Logger) async throws(OutboxWriterError) -> [Int64] {
        for (i, m) in messages.enumerated() {
            if let problem = m.problem { throw OutboxWriterError(.invalidMessage, "message \(i): \(problem)") }
        }
        let context = traceHeaders()
        var ids: [Int64] = []
        ids.reserveCapacity(messages.count)
        var start = 0
        while start < messages.count {
            let chunk = messages[start..<min(messages.count, start + Self.maxRowsPerStatement)]
            let query = try insert(chunk, traceHeaders: context)
            do {
                let rows = try await connection.query(query, logger: logger)
                for try await id in rows.decode(Int64.self) { ids.append(id) }
            } catch let error as PSQLError {
                throw OutboxWriterError(database: error, table: tableSQL)
            } catch {
                throw OutboxWriterError(.database, "INSERT INTO \(tableSQL) failed: \(error)")
            }
            start += chunk.count
        }
        return ids
    }

    /// One multi-row INSERT; ids are drawn left to right, and RETURNING is sorted to match.
    func insert(_ chunk: ArraySlice<OutboxMessage>, traceHeaders: [String: String]) throws(OutboxWriterError) -> PostgresQuery {
        var binds = PostgresBindings(capacity: chunk.count * 4)
        var values: [String] = []
        values.reserveCapacity(chunk.count)
        for m in chunk {
            let n = binds.count
            values.append("($\(n + 1), $\(n + 2), $\(n + 3), $\(n + 4)::jsonb)")
            binds.append(m.topic)
            if let key = m.key { binds.append(ByteBuffer(bytes: key)) } else { binds.appendNull() }
            if let value = m.value { binds.append(ByteBuffer(bytes: value)) } else { binds.appendNull() }
            var headers = m.headers
            for (name, v) in traceHeaders where !headers.keys.contains(where: { $0.lowercased() == name.lowercased() }) {
                headers[name] = v
            }
            if headers.isEmpty { binds.appendNull() } else { binds.append(try Self.json(headers)) }
        }
        let sql = "INSERT INTO \(tableSQL) (topic, key, value, headers) VALUES \(values.joined(separator: ", ")) RETURNING id"
        // A multi-row VALUES list draws its identity values in list order; RETURNING's order is
        // not promised by PostgreSQL, so sort the ids (they are the list order).
        return PostgresQuery(unsafeSQL: chunk.count == 1 ? sql : "WITH w AS (\(sql)) SELECT id FROM w ORDER BY id", binds: binds)
    }

    /// The current trace context as headers, when a tracer is active.
    func traceHeaders() -> [String: String] {
        guard let instrument, let context = ServiceContext.current else { return [:] }
        var carrier: [String: String] = [:]
        instrument.inject(context, into: &carrier, using: DictionaryInjector())
        return carrier
    }

    static func json(_ headers: [String: String]) throws(OutboxWriterError) -> String {
        do {
            let data = try JSONSerialization.data(withJSONObject: headers, options: [.sortedKeys])
            return String(decoding: data, as: UTF8.self)
        } catch {
            throw OutboxWriterError(.invalidMessage, "headers cannot be written as JSON: \(error)")
        }
    }

    /// `schema.table` → `"schema"."table"`, exactly as the relay's `--table` reads it: split at
    /// the dot, each part taken literally (case kept) and quoted.
    static func quotedTable(_ name: String) throws(OutboxWriterError) -> String {
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count <= 2, parts.allSatisfy({ !$0.isEmpty }), !name.contains("\0") else {
            throw OutboxWriterError(.invalidTableName, "invalid outbox table name \"\(name)\": expected TABLE or SCHEMA.TABLE, as given to the relay's --table")
        }
        if parts.count == 1 { parts.insert("public", at: 0) }
        return parts.map { "\"" + $0.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }.joined(separator: ".")
    }
}

/// One row to write.
public struct OutboxMessage: Sendable, Equatable {
    public var topic: String
    public var key: [UInt8]?
    /// `nil` is a tombstone (Kafka deletes the key in a compacted topic).
    public var value: [UInt8]?
    public var headers: [String: String]

    public init(topic: String, key: [UInt8]?, value: [UInt8]?, headers: [String: String] = [:]) {
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
    }

    public init(topic: String, key: String?, value: String?, headers: [String: String] = [:]) {
        self.init(topic: topic, key: key.map { Array($0.utf8) }, value: value.map { Array($0.utf8) }, headers: headers)
    }

    /// What the table (or the relay) would refuse, found before the database is asked.
    var problem: String? {
        if topic.isEmpty { return "the topic is empty" }
        if topic.utf8.count > 249 { return "topic \"\(topic.prefix(40))…\" is longer than Kafka's 249 characters" }
        if let bad = topic.unicodeScalars.first(where: { !($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0))) }) {
            return "topic \"\(topic)\" has \"\(bad)\"; Kafka topic names are ASCII letters, digits, '.', '_' and '-'"
        }
        if let reserved = headers.keys.first(where: { $0.lowercased() == "outbox-id" }) {
            return "header \"\(reserved)\" is the relay's own (the row id); use another name"
        }
        if headers.keys.contains(where: { $0.isEmpty || $0.contains("\0") }) || headers.values.contains(where: { $0.contains("\0") }) {
            return "header names must be non-empty, and names and values must not contain NUL"
        }
        return nil
    }
}

/// Why a write failed: the kind, a message naming what is at fault, and PostgreSQL's SQLSTATE
/// when the database refused it.
public struct OutboxWriterError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// The table name cannot be quoted as TABLE or SCHEMA.TABLE.
        case invalidTableName
        /// A message the relay or the table would refuse (empty topic, reserved header, …).
        case invalidMessage
        /// The INSERT failed in the database (see ``sqlState``): the table is missing, a
        /// privilege is missing, the transaction is aborted, the connection is gone, ….
        case database
    }

    public let kind: Kind
    public let message: String
    /// PostgreSQL's SQLSTATE, e.g. `42P01` (table missing), `42501` (privilege), `25P02` (the
    /// transaction was already aborted).
    public let sqlState: String?

    init(_ kind: Kind, _ message: String, sqlState: String? = nil) {
        self.kind = kind
        self.message = message
        self.sqlState = sqlState
    }

    init(database error: PSQLError, table: String) {
        let state = error.serverInfo?[.sqlState]
        let text = error.serverInfo?[.message] ?? "\(error.code)"
        var hint = ""
        switch state {
        case "42P01": hint = " (run `outbox-relay migrate --table …` first)"
        case "42501": hint = " (GRANT INSERT ON \(table) and USAGE on its sequence to the application's role)"
        case "428C9": hint = " (id is assigned by the table; do not supply it)"
        default: break
        }
        self.init(.database, "INSERT INTO \(table) failed: \(text)\(state.map { " [SQLSTATE \($0)]" } ?? "")\(hint)", sqlState: state)
    }

    public var description: String { message }
}

struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}
