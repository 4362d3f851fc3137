import Foundation
import PGClient

/// Statements on the dead-letter table: moving a row there (atomically with its lease-checked
/// delete), recording failed attempts, and the operator commands (list, requeue, purge).
public struct DeadLetterQueries: Sendable {
    public let table: OutboxTable

    public init(table: OutboxTable) { self.table = table }

    /// Moves one row to the dead-letter table in one statement (so in one transaction with its
    /// delete), only while this replica's lease epoch is current. Returns whether it moved.
    /// Dead letters have a key of their own: a row whose id is already there (ids repeat after
    /// `TRUNCATE … RESTART IDENTITY`) lands next to it — nothing leaves the outbox without landing.
    /// `createdAtMicros`: move the row only if its `created_at` (µs since 1970) is this too — for
    /// a row read before a lost connection, whose id may name a newer row after an asynchronous
    /// failover (see ``OutboxQueries/deleteChecked``); that row must not be dead-lettered.
    public func deadLetter(_ conn: PGConnection, rowId: Int64, owner: String, epoch: Int64,
                           reason: String, errorCode: String?, createdAtMicros: Int64? = nil) throws(PGError) -> Bool {
        let r = try conn.execute(prepared: "dead_letter_move", """
            WITH moved AS (
                DELETE FROM \(table.sql) AS o USING \(table.leasesSQL) AS l
                WHERE o.\(table.idSQL) = $1 AND l.shard = \(table.shardSQL("o")) AND l.owner = $2 AND l.epoch = $3
                  AND ($6::bigint IS NULL OR (EXTRACT(EPOCH FROM o.created_at) * 1000000)::bigint = $6)
                RETURNING \(table.messageColumnsSQL(alias: "o"))
            )
            INSERT INTO \(table.deadLetterSQL) (id, topic, key, value, headers, created_at, attempts, reason, error_code, replica)
            SELECT id, topic, key, value, headers, created_at, attempts + 1, $4, $5, $2 FROM moved
            """, [.int8(rowId), .text(owner), .int8(epoch), .text(reason), errorCode.map { .text($0) } ?? .null(oid: PGType.text),
                  createdAtMicros.map { .int8($0) } ?? .null(oid: PGType.int8)])
        return r.affectedRows > 0
    }

    /// Counts a failed attempt and keeps the last error (truncated, secrets removed).
    public func recordAttempt(_ conn: PGConnection, rowIds: [Int64], error: String) throws(PGError) {
        try conn.execute(prepared: "outbox_attempt", """
            UPDATE \(table.sql) SET attempts = attempts + 1, last_error = $2 WHERE \(table.idSQL) = ANY($1::bigint[])
            """, [.int8Array(rowIds), .text(Self.truncate(Redaction.redact(error)))])
    }

    static func truncate(_ s: String, to limit: Int = 500) -> String {
        s.count <= limit ? s : String(s.prefix(limit)) + "…"
    }

    // MARK: Operator commands

    public struct Entry: Sendable, Codable, Equatable {
        public let id: Int64
        public let topic: String
        /// The key as text when it is valid UTF-8, else as hexadecimal (see `keyEncoding`).
        public let key: String?
        /// `utf8` or `hex`; nil for a NULL key.
        public let keyEncoding: String?
        public let attempts: Int
        public let reason: String
        public let errorCode: String?
        public let deadLetteredAt: String
    }

    /// A filter on dead letters: by topic and/or ids (none = all).
    public struct Filter: Sendable {
        public var topic: String?
        public var ids: [Int64]
        public init(topic: String? = nil, ids: [Int64] = []) {
            self.topic = topic
            self.ids = ids
        }
        var sql: String { "($1::text IS NULL OR topic = $1) AND (cardinality($2::bigint[]) = 0 OR id = ANY($2::bigint[]))" }
        var parameters: [PGParameter] { [topic.map { .text($0) } ?? .null(oid: PGType.text), .int8Array(ids)] }
    }

    public func list(_ conn: PGConnection, filter: Filter, limit: Int) throws(PGError) -> [Entry] {
        let r = try conn.query("""
            SELECT id, topic, key, attempts, reason, error_code,
                   to_char(dead_lettered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            FROM \(table.deadLetterSQL) WHERE \(filter.sql) ORDER BY id, dead_letter_id LIMIT $3
            """, filter.parameters + [.int8(Int64(limit))])
        var out: [Entry] = []
        for i in 0..<r.rowCount {
            // A binary key (not valid UTF-8) is shown as hex; the table keeps the bytes.
            let bytes = r.bytes(i, 2)
            let text = bytes.flatMap { String(validating: $0, as: UTF8.self) }
            let key = bytes.map { b in text ?? b.map { String(format: "%02x", $0) }.joined() }
            out.append(Entry(id: try r.int64(i, 0), topic: r.string(i, 1) ?? "", key: key,
                             keyEncoding: bytes == nil ? nil : (text != nil ? "utf8" : "hex"),
                             attempts: Int(try r.int32(i, 3)), reason: r.string(i, 4) ?? "", errorCode: r.string(i, 5),
                             deadLetteredAt: r.string(i, 6) ?? ""))
        }
        return out
    }

    /// Puts dead letters back into the outbox, in id order, as new rows (new ids, so the claim
    /// cursor cannot have passed them); the original id travels in the `outbox-requeued-from`
    /// header. Returns the number requeued.
    public func requeue(_ conn: PGConnection, filter: Filter) throws(PGError) -> Int {
        try conn.query("""
            WITH moved AS (
                DELETE FROM \(table.deadLetterSQL) WHERE \(filter.sql)
                RETURNING id, dead_letter_id, topic, key, value, headers
            )
            INSERT INTO \(table.sql) (topic, key, value, headers)
            SELECT topic, key, value, coalesce(headers, '{}'::jsonb) || jsonb_build_object('outbox-requeued-from', id::text)
            FROM moved ORDER BY id, dead_letter_id
            """, filter.parameters).affectedRows
    }

    /// Deletes dead letters for good. Returns the number purged.
    public func purge(_ conn: PGConnection, filter: Filter) throws(PGError) -> Int {
        try conn.query("DELETE FROM \(table.deadLetterSQL) WHERE \(filter.sql)", filter.parameters).affectedRows
    }

    public func count(_ conn: PGConnection) throws(PGError) -> Int64 {
        try conn.query("SELECT count(*) FROM \(table.deadLetterSQL)").int64(0, 0)
    }
}
