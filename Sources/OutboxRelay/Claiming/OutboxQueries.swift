import Kafka
import PGClient

/// The relay's statements on the outbox table. Constant texts with binary parameters, prepared
/// once per connection; arrays (`= ANY`) so that one statement serves a whole batch.
public struct OutboxQueries: Sendable {
    public let table: OutboxTable
    let claimSQL: String
    let deleteSQL: String

    public let shape: MessageShape

    public init(table: OutboxTable, shape: MessageShape = MessageShape()) {
        self.table = table
        self.shape = shape
        // The snapshot's xmin/xmax come from the same statement as the rows (one snapshot);
        // the LEFT JOIN keeps one row with them when nothing is waiting.
        claimSQL = """
            SELECT s.xmin, s.xmax, o.id, o.shard, o.topic, o.key, o.value, o.created_at, h.names, h.vals,
                   CASE WHEN o.not_before > s.now THEN ceil(EXTRACT(EPOCH FROM o.not_before - s.now) * 1000)::bigint ELSE 0::bigint END
            FROM (SELECT pg_snapshot_xmin(c) AS xmin, pg_snapshot_xmax(c) AS xmax, clock_timestamp() AS now FROM pg_current_snapshot() AS c) AS s
            LEFT JOIN LATERAL (
                SELECT id, shard, topic, key, value, created_at, headers, not_before FROM \(table.sql)
                WHERE shard = ANY($1::integer[]) AND id > $2 AND id NOT IN (SELECT unnest($3::bigint[]))
                ORDER BY id LIMIT $4
            ) AS o ON true
            LEFT JOIN LATERAL (
                SELECT array_agg(e.key) AS names, array_agg(e.value) AS vals FROM jsonb_each_text(o.headers) AS e
            ) AS h ON true
            ORDER BY o.id
            """
        // Lease-checked: a row is deleted only while this replica's lease epoch on its shard is current.
        deleteSQL = """
            DELETE FROM \(table.sql) AS o USING \(table.leasesSQL) AS l
            WHERE o.id = ANY($1::bigint[]) AND l.shard = o.shard AND l.owner = $2
              AND l.epoch = ($3::bigint[])[o.shard + 1]
            """
    }

    /// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's timestamp epoch).
    static let postgresEpochOffsetMicros: Int64 = 946_684_800_000_000

    /// Reads the next rows of `shards` per `request`, shaped as Kafka messages.
    public func claim(_ conn: PGConnection, shards: [Int32], request: ClaimCursor.Request) throws(PGError) -> ClaimBatch {
        let result = try conn.execute(prepared: "outbox_claim", claimSQL, [
            .int4Array(shards), .int8(request.lowerBound), .int8Array(request.excluded), .int8(Int64(request.limit)),
        ])
        let xmin = try result.uint64(0, 0)
        let xmax = try result.uint64(0, 1)
        var rows: [ClaimedRow] = []
        rows.reserveCapacity(result.rowCount)
        for r in 0..<result.rowCount where !result.isNull(r, 2) {
            rows.append(try Self.row(result, r, shape: shape))
        }
        return ClaimBatch(snapshotXmin: xmin, snapshotXmax: xmax, rows: rows)
    }

    static func row(_ result: PGResult, _ r: Int, shape: MessageShape) throws(PGError) -> ClaimedRow {
        let id = try result.int64(r, 2)
        let shard = try result.int32(r, 3)
        let topic = result.string(r, 4) ?? ""
        let created = try result.timestampMicros(r, 7) + postgresEpochOffsetMicros
        // Header names and values stay in the result's buffers until copied into the message.
        let names = try result.arrayElements(r, 8)
        let values = try result.arrayElements(r, 9)
        // Size the message's one buffer exactly: key, value, headers (+ NUL per name), outbox-id.
        var capacity = result.length(r, 5) + result.length(r, 6) + ClaimedRow.idHeader.utf8.count + 21
        for n in names { capacity += (n?.count ?? 0) + 1 }
        for v in values { capacity += v?.count ?? 0 }
        var message = KafkaMessage(topic: topic, capacity: capacity, headerCapacity: names.count + 1)
        if !result.isNull(r, 5) { result.withRawValue(r, 5) { message.setKey($0) } }
        if !result.isNull(r, 6) { result.withRawValue(r, 6) { message.setValue($0) } }
        for (i, name) in names.enumerated() {
            guard let name else { continue }
            message.addHeader(name: name, value: i < values.count ? values[i] : nil)
        }
        message.addHeader(name: ClaimedRow.idHeader, decimal: id)
        if shape.isActive {
            let rowHeaders = names.map { $0.map { String(decoding: $0, as: UTF8.self) } }
            shape.addHeaders(to: &message, id: id, topic: topic, createdAtMicros: created, rowHeaders: rowHeaders)
        }
        let delay = try result.int64(r, 10)
        return ClaimedRow(id: id, shard: shard, createdAtMicros: created, message: message, notBeforeDelayMillis: delay)
    }

    /// Deletes acknowledged rows whose lease this replica still holds at `epochs[shard]`.
    /// Returns the number of rows deleted (fewer than `ids.count` means leases were lost).
    public func delete(_ conn: PGConnection, ids: [Int64], owner: String, epochs: [Int64]) throws(PGError) -> Int {
        try conn.execute(prepared: "outbox_delete", deleteSQL, [.int8Array(ids), .text(owner), .int8Array(epochs)]).affectedRows
    }
}
