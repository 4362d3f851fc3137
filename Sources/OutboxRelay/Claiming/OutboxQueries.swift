import Kafka
import PGClient

/// The relay's statements on the outbox table. Constant texts with binary parameters, prepared
/// once per connection; arrays (`= ANY`) so that one statement serves a whole batch.
public struct OutboxQueries: Sendable {
    public let table: OutboxTable
    /// The claim with a shard filter, for a replica holding some of the shards.
    let claimSQL: String
    /// The claim when this replica holds every shard: the filter would pass every row, and
    /// testing 256 array elements per row was a tenth of the claim's PostgreSQL CPU.
    let claimAllSQL: String
    let deleteSQL: String

    public let shape: MessageShape

    public init(table: OutboxTable, shape: MessageShape = MessageShape()) {
        self.table = table
        self.shape = shape
        // The snapshot's xmin/xmax come from the same statement as the rows (one snapshot);
        // the LEFT JOIN keeps one row with them when nothing is waiting. Headers come as the
        // jsonb's text and are read by HeaderJSON (expanding them here was a third of the cost).
        func claim(filter: String, cursor: Int) -> String {
            """
            SELECT s.xmin, s.xmax, o.id, o.shard, o.topic, o.key, o.value, o.created_at, o.headers::text,
                   CASE WHEN o.not_before > s.now THEN ceil(EXTRACT(EPOCH FROM o.not_before - s.now) * 1000)::bigint ELSE 0::bigint END
            FROM (SELECT pg_snapshot_xmin(c) AS xmin, pg_snapshot_xmax(c) AS xmax, clock_timestamp() AS now FROM pg_current_snapshot() AS c) AS s
            LEFT JOIN LATERAL (
                SELECT id, shard, topic, key, value, created_at, headers, not_before FROM \(table.sql)
                WHERE \(filter)id > $\(cursor) AND id NOT IN (SELECT unnest($\(cursor + 1)::bigint[]))
                ORDER BY id LIMIT $\(cursor + 2)
            ) AS o ON true
            ORDER BY o.id
            """
        }
        claimSQL = claim(filter: "shard = ANY($1::integer[]) AND ", cursor: 2)
        claimAllSQL = claim(filter: "", cursor: 1)
        // Lease-checked: a row is deleted only while this replica's lease epoch on its shard is current.
        deleteSQL = """
            DELETE FROM \(table.sql) AS o USING \(table.leasesSQL) AS l
            WHERE o.id = ANY($1::bigint[]) AND l.shard = o.shard AND l.owner = $2
              AND l.epoch = ($3::bigint[])[o.shard + 1]
            """
    }

    /// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's timestamp epoch).
    static let postgresEpochOffsetMicros: Int64 = 946_684_800_000_000

    /// Reads the next rows of `shards` per `request`, shaped as Kafka messages. `allShards`:
    /// `shards` is every shard of the table (the claim then needs no shard filter).
    public func claim(_ conn: PGConnection, shards: [Int32], allShards: Bool = false,
                      request: ClaimCursor.Request) throws(PGError) -> ClaimBatch {
        let cursor: [PGParameter] = [.int8(request.lowerBound), .int8Array(request.excluded), .int8(Int64(request.limit))]
        let result = allShards
            ? try conn.execute(prepared: "outbox_claim_all", claimAllSQL, cursor)
            : try conn.execute(prepared: "outbox_claim", claimSQL, [.int4Array(shards)] + cursor)
        let xmin = try result.uint64(0, 0)
        let xmax = try result.uint64(0, 1)
        var rows: [ClaimedRow] = []
        rows.reserveCapacity(result.rowCount)
        var scratch: [UInt8] = []
        var topics = TopicNames()
        for r in 0..<result.rowCount where !result.isNull(r, 2) {
            rows.append(try Self.row(result, r, shape: shape, scratch: &scratch, topics: &topics))
        }
        return ClaimBatch(snapshotXmin: xmin, snapshotXmax: xmax, rows: rows)
    }

    /// Rows of a claim share one String per topic name: a name over 15 bytes is a heap string,
    /// and building it per row allocated per row (and made the producer's lookup hash it).
    struct TopicNames {
        var last = ""
        mutating func name(_ result: PGResult, _ r: Int, _ column: Int) -> String {
            if result.isNull(r, column) { return "" }
            let same = result.withRawValue(r, column) { raw in
                last.utf8.withContiguousStorageIfAvailable { raw.elementsEqual($0) } ?? raw.elementsEqual(last.utf8)
            }
            if !same { last = result.string(r, column) ?? "" }
            return last
        }
    }

    static func row(_ result: PGResult, _ r: Int, shape: MessageShape, scratch: inout [UInt8],
                    topics: inout TopicNames) throws(PGError) -> ClaimedRow {
        let id = try result.int64(r, 2)
        let shard = try result.int32(r, 3)
        let topic = topics.name(result, r, 4)
        let created = try result.timestampMicros(r, 7) + postgresEpochOffsetMicros
        // Size the message's one buffer once: key, value, headers and outbox-id. The headers'
        // JSON text bounds their unescaped bytes plus a NUL per name (each member spends at
        // least `"":` on its name), and its colons bound the number of headers.
        let headersNull = result.isNull(r, 8)
        let headersLength = result.length(r, 8)
        var headerCount = 1
        if !headersNull { result.withRawValue(r, 8) { for c in $0 where c == UInt8(ascii: ":") { headerCount += 1 } } }
        let capacity = result.length(r, 5) + result.length(r, 6) + headersLength + ClaimedRow.idHeader.utf8.count + 21
        func keyAndValue(headerCapacity: Int) -> KafkaMessage {
            var m = KafkaMessage(topic: topic, capacity: capacity, headerCapacity: headerCapacity)
            if !result.isNull(r, 5) { result.withRawValue(r, 5) { m.setKey($0) } }
            if !result.isNull(r, 6) { result.withRawValue(r, 6) { m.setValue($0) } }
            return m
        }
        var message = keyAndValue(headerCapacity: headerCount)
        var rowHeaders: [String?] = []
        var unreadable: String?
        if !headersNull {
            let active = shape.isActive
            do {
                try result.withRawValue(r, 8) { text throws(HeaderJSON.Malformed) in
                    try HeaderJSON.forEachMember(text, scratch: &scratch) { name, value in
                        message.addHeader(name: name, value: value)
                        if active { rowHeaders.append(String(decoding: name, as: UTF8.self)) }
                    }
                }
            } catch {
                // PostgreSQL prints jsonb canonically, so this means a gap in HeaderJSON: the row
                // is dead-lettered with the reason (its headers kept in the dead-letter table)
                // rather than sent without them or left to stall every claim.
                unreadable = "headers unreadable: \(error)"
                rowHeaders = []
                message = keyAndValue(headerCapacity: 1)
            }
        }
        message.addHeader(name: ClaimedRow.idHeader, decimal: id)
        if shape.isActive {
            shape.addHeaders(to: &message, id: id, topic: topic, createdAtMicros: created, rowHeaders: rowHeaders)
        }
        let delay = try result.int64(r, 9)
        return ClaimedRow(id: id, shard: shard, createdAtMicros: created, message: message, notBeforeDelayMillis: delay,
                          unreadable: unreadable)
    }

    /// Deletes acknowledged rows whose lease this replica still holds at `epochs[shard]`.
    /// Returns the number of rows deleted (fewer than `ids.count` means leases were lost).
    public func delete(_ conn: PGConnection, ids: [Int64], owner: String, epochs: [Int64]) throws(PGError) -> Int {
        try conn.execute(prepared: "outbox_delete", deleteSQL, [.int8Array(ids), .text(owner), .int8Array(epochs)]).affectedRows
    }
}
