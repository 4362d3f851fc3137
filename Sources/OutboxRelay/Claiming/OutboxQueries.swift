import Kafka
import PGClient

/// The relay's statements on the outbox table. Constant texts with binary parameters, prepared
/// once per connection; arrays (`= ANY`) so that one statement serves a whole batch. A class:
/// every claim captures it, and copying its many statement texts retained each of them.
public final class OutboxQueries: Sendable {
    public let table: OutboxTable
    /// The claims, each with a shard filter (a replica holding some of the shards) and without
    /// (it holds every shard: the filter would pass every row, and testing 256 array elements per
    /// row was a tenth of the claim's PostgreSQL CPU). See ``ClaimCursor`` for the protocol.
    let sweepSQL: ClaimStatement
    let windowSQL: ClaimStatement
    let windowContinuedSQL: ClaimStatement
    let deleteSQL: String
    /// The same DELETE for many ids, with the lease table read once (see ``delete``).
    let deleteManySQL: String
    /// The DELETE of rows acknowledged before a lost connection: also checks each row's
    /// `created_at` (see ``deleteChecked``).
    let deleteCheckedSQL: String
    /// From this many ids on, the delete loop uses ``deleteManySQL``.
    public static let deleteManyFrom = 32

    struct ClaimStatement: Sendable {
        /// The prepared statements' names, derived from one and built once (not per claim).
        let filteredName: String
        let allName: String
        let filteredDeletingName: String
        let allDeletingName: String
        let filtered: String
        let all: String
        /// The same claims carrying a lease-checked DELETE of acknowledged rows (see
        /// ``FusedDelete``): one statement and one transaction instead of two of each.
        let filteredDeleting: String
        let allDeleting: String

        init(name: String, filtered: String, all: String, filteredDeleting: String, allDeleting: String) {
            filteredName = name
            allName = name + "_all"
            filteredDeletingName = name + "_del"
            allDeletingName = name + "_all_del"
            self.filtered = filtered
            self.all = all
            self.filteredDeleting = filteredDeleting
            self.allDeleting = allDeleting
        }
    }

    /// Acknowledged rows to delete in the same statement as a claim, under the same lease check
    /// as ``delete(_:ids:owner:epochs:)``. The claim's rows are read in the statement's snapshot,
    /// which the DELETE does not change; the deleted rows are in flight, so no claim reads them.
    ///
    /// `epochs` are per row (`epochs[i]` is the epoch `ids[i]`'s shard is held under), not per
    /// shard like the other DELETEs': a claim of a trickle carries a row or two, and sending (and
    /// decoding) an epoch for each of 256 shards with every claim was a tenth of the claim
    /// session's CPU and about 0.04 ms of PostgreSQL CPU per row at 100 rows/s. The statement finds
    /// a row's epoch with `array_position` (linear), so a claim carries at most `maxIds` rows.
    ///
    /// `shards` are per row too: the shard each row was claimed in (the claim computed it, from
    /// the row's key and id, which never change). The lease check reads that shard's lease row
    /// instead of computing the shard again: the expression's `md5` cost the relay's backends
    /// 5-8 us per row at a trickle, where every call runs with cold caches (perf, 100 rows/s).
    public struct FusedDelete: Sendable {
        public static let maxIds = 64
        public var ids: [Int64]
        public var owner: String
        public var shards: [Int32]
        public var epochs: [Int64]
        public init(ids: [Int64], owner: String, shards: [Int32], epochs: [Int64]) {
            precondition(ids.count == epochs.count && ids.count == shards.count, "a fused DELETE needs one shard and one epoch per id")
            self.ids = ids
            self.owner = owner
            self.shards = shards
            self.epochs = epochs
        }
    }

    public let shape: MessageShape
    /// Header names a row may not set (the relay's own), from `shape`, computed once.
    let reservedHeaders: [[UInt8]]
    /// Debezium layout with `table.expand.json.payload=true`: values are sent as compact JSON.
    let compactJSONValues: Bool

    public init(table: OutboxTable, shape: MessageShape = MessageShape()) {
        self.table = table
        self.shape = shape
        self.reservedHeaders = shape.reservedHeaderNames
        if case .debezium(let routing) = table.layout { compactJSONValues = routing.expandJSONPayload } else { compactJSONValues = false }
        // One statement returns the snapshot (first column) and the rows; the LEFT JOIN keeps one
        // row with the snapshot when nothing is waiting. `OFFSET 0` keeps the snapshot subquery
        // from being flattened, so the snapshot is computed once per statement, not per row.
        // Headers come as the jsonb's text and are read by HeaderJSON (expanding them here was a
        // third of the cost).
        // The last column is the database's clock (µs since the epoch) when the claim ran: the
        // relay measures commit → acknowledgement against it, not against its own wall clock.
        let columns = "o.id, o.shard, o.topic, o.key, o.value, o.created_at, o.headers::text, " +
            "CASE WHEN o.not_before > s.now THEN ceil(EXTRACT(EPOCH FROM o.not_before - s.now) * 1000)::bigint ELSE 0::bigint END, " +
            "(EXTRACT(EPOCH FROM s.now) * 1000000)::bigint"
        // Lease-checked: a row is deleted only while this replica's lease epoch on its shard is
        // current. The lease is read by a scalar subquery on its primary key, not a join: that
        // shape's one plan is right for any parameters, so the delete session runs it with
        // `plan_cache_mode = force_generic_plan` (planning every execution was 18 % of the relay
        // backends' CPU in the steady state; a join's generic plan hashes the whole lease table).
        func deleteStatement(first n: Int) -> String {
            """
            DELETE FROM \(table.sql) AS o
            WHERE o.\(table.idSQL) = ANY($\(n)::bigint[])
              AND (SELECT l.owner = $\(n + 1) AND l.epoch = ($\(n + 2)::bigint[])[l.shard + 1]
                   FROM \(table.leasesSQL) AS l WHERE l.shard = \(table.shardSQL("o")))
            """
        }
        // The fused form: the same lease check, with the shard it was claimed in and the epoch
        // looked up per row (see FusedDelete).
        func fusedDeleteStatement(first n: Int) -> String {
            """
            DELETE FROM \(table.sql) AS o
            WHERE o.\(table.idSQL) = ANY($\(n)::bigint[])
              AND (SELECT l.owner = $\(n + 1) AND l.epoch = ($\(n + 2)::bigint[])[array_position($\(n)::bigint[], o.\(table.idSQL))]
                   FROM \(table.leasesSQL) AS l
                   WHERE l.shard = ($\(n + 3)::integer[])[array_position($\(n)::bigint[], o.\(table.idSQL))])
            """
        }
        func statement(_ name: String, snapshot: (Int) -> String, where condition: (Int) -> String, order: String) -> ClaimStatement {
            // A claim's parameters are $1 ... $(first + 3); a fused DELETE's follow them. The
            // deleted count is the last column (a data-modifying WITH runs to completion once,
            // whether or not its output is read).
            func text(filter: String, first: Int, deleting: Bool = false) -> String {
                """
                \(deleting ? "WITH d AS (\(fusedDeleteStatement(first: first + 4)) RETURNING 1)\n" : "")\
                SELECT s.snap::text, \(columns)\(deleting ? ", (SELECT count(*) FROM d)" : "")
                FROM (SELECT \(snapshot(first)) OFFSET 0) AS s
                LEFT JOIN LATERAL (
                    SELECT id, \(table.shardSQL("src")) AS shard, topic, key, value, created_at, headers, not_before FROM \(table.sourceSQL) AS src
                    WHERE \(filter)\(condition(first + 1))
                    ORDER BY \(order) LIMIT $\(first + 1)
                ) AS o ON true
                ORDER BY o.id
                """
            }
            let filter = "\(table.shardSQL("src")) = ANY($1::integer[]) AND "
            return ClaimStatement(name: name, filtered: text(filter: filter, first: 2), all: text(filter: "", first: 1),
                                  filteredDeleting: text(filter: filter, first: 2, deleting: true),
                                  allDeleting: text(filter: "", first: 1, deleting: true))
        }
        // Sweep: every row visible in the snapshot ($S; NULL = the statement's own), id > $after,
        // except the rows in flight. Parameters after the shards: snapshot, limit, after, excluded.
        sweepSQL = statement("outbox_sweep",
            snapshot: { n in "COALESCE($\(n)::text::pg_snapshot, pg_current_snapshot()) AS snap, clock_timestamp() AS now" },
            where: { n in "id > $\(n + 1) AND id NOT IN (SELECT unnest($\(n + 2)::bigint[])) AND pg_visible_in_snapshot(txid, s.snap)" },
            order: "id")
        // Window, first page: rows of transactions invisible in the previous snapshot — xid at or
        // above its xmax, or in its in-progress list — found on the txid index, whatever their id.
        // A row the statement can see was committed by its own snapshot. `id + 0`: sort the
        // window's rows rather than walk the primary key. Parameters: snapshot (unused, NULL),
        // limit, since.xmax, since.xip.
        windowSQL = statement("outbox_window",
            snapshot: { n in "pg_current_snapshot() AS snap, $\(n)::text AS unused, clock_timestamp() AS now" },
            where: { n in "(txid >= $\(n + 1)::text::xid8 AND txid < pg_snapshot_xmax(s.snap) OR txid = ANY($\(n + 2)::text::xid8[]))" },
            order: "id + 0")
        // Window, later pages: the first page's snapshot fixed, read on in id order. Parameters:
        // snapshot, limit, after, since.
        windowContinuedSQL = statement("outbox_window_next",
            snapshot: { n in "$\(n)::text::pg_snapshot AS snap, $\(n + 3)::text::pg_snapshot AS since, clock_timestamp() AS now" },
            where: { n in "id > $\(n + 1) AND pg_visible_in_snapshot(txid, s.snap) AND NOT pg_visible_in_snapshot(txid, s.since)" },
            order: "id")
        deleteSQL = deleteStatement(first: 1)
        deleteCheckedSQL = deleteStatement(first: 1) + """

              AND (EXTRACT(EPOCH FROM o.created_at) * 1000000)::bigint = ANY($4::bigint[])
            """
        // For a drain's DELETE of a batch: the shards whose lease this replica holds at the
        // expected epoch, read once per statement (an InitPlan over the 256 lease rows) and
        // tested per row, instead of a lease lookup per row — that lookup was about half of a
        // 1000-row DELETE's execution (EXPLAIN ANALYZE, generic plans, three interleaved rounds
        // of 20 000 rows: 35-47 against 74-86 ms). Same rows deleted: a row passes iff its
        // shard's lease row has this owner and the epoch it was produced under, read in the
        // statement's snapshot either way. Not a join: a join's generic plan depends on the
        // statistics, and one chose a sequential scan of the outbox for every DELETE (50 s for a
        // 200 000-row drain); this keeps the one plan of the per-row form, the primary-key scan
        // of the ids. (For a few ids the lookups are cheaper than reading every lease.)
        deleteManySQL = """
            DELETE FROM \(table.sql) AS o
            WHERE o.\(table.idSQL) = ANY($1::bigint[])
              AND \(table.shardSQL("o")) = ANY(ARRAY(SELECT l.shard FROM \(table.leasesSQL) AS l
                                      WHERE l.owner = $2 AND l.epoch = ($3::bigint[])[l.shard + 1]))
            """
    }

    /// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's timestamp epoch).
    static let postgresEpochOffsetMicros: Int64 = 946_684_800_000_000

    /// Reads the next rows of `shards` per `request`, shaped as Kafka messages. `allShards`:
    /// `shards` is every shard of the table (the claim then needs no shard filter).
    /// `deleting`: acknowledged rows to delete in the same statement; the batch's `deleted` says
    /// how many were.
    public func claim(_ conn: PGConnection, shards: [Int32], allShards: Bool = false,
                      request: ClaimCursor.Request, deleting: FusedDelete? = nil) throws(PGError) -> ClaimBatch {
        let statement: ClaimStatement
        // One array, sized once: the shard filter's (unless every shard), the claim's four, a
        // fused DELETE's four.
        var parameters: [PGParameter] = []
        parameters.reserveCapacity(10)
        if !allShards { parameters.append(.int4Array(shards)) }
        parameters.append(request.snapshot.map { .text($0.description) } ?? .null(oid: PGType.text))
        parameters.append(.int8(Int64(request.limit)))
        switch request.mode {
        case .sweep:
            statement = sweepSQL
            parameters.append(.int8(request.after))
            parameters.append(.int8Array(request.excluded))
        case .window, .windowContinued:
            // ClaimCursor always names a window's lower snapshot; a missing one is a bug, not "everything".
            guard let since = request.since else { preconditionFailure("a window request without its lower snapshot: \(request)") }
            if request.mode == .window {
                statement = windowSQL
                parameters.append(.text(String(since.xmax)))
                parameters.append(.text(since.xipArrayLiteral))
            } else {
                statement = windowContinuedSQL
                parameters.append(.int8(request.after))
                parameters.append(.text(since.description))
            }
        }
        if let deleting {
            parameters.append(.int8Array(deleting.ids))
            parameters.append(.text(deleting.owner))
            parameters.append(.int8Array(deleting.epochs))
            parameters.append(.int4Array(deleting.shards))
        }
        let result = switch (allShards, deleting == nil) {
        case (true, true): try conn.execute(prepared: statement.allName, statement.all, parameters)
        case (true, false): try conn.execute(prepared: statement.allDeletingName, statement.allDeleting, parameters)
        case (false, true): try conn.execute(prepared: statement.filteredName, statement.filtered, parameters)
        case (false, false): try conn.execute(prepared: statement.filteredDeletingName, statement.filteredDeleting, parameters)
        }
        guard let snapshot = result.isNull(0, 0) ? nil : result.withRawValue(0, 0, { PGSnapshot(utf8: $0) }) else {
            throw PGError(.unexpectedResult, message: "claim: unreadable snapshot \"\(result.string(0, 0) ?? "NULL")\"")
        }
        let databaseNowMicros = result.isNull(0, 9) ? nil : try? result.int64(0, 9)
        var rows: [ClaimedRow] = []
        rows.reserveCapacity(result.rowCount)
        var scratch: [UInt8] = []
        var topics = TopicNames()
        for r in 0..<result.rowCount where !result.isNull(r, 1) {
            rows.append(try Self.row(result, r, shape: shape, scratch: &scratch, topics: &topics, reserved: reservedHeaders,
                                     compactJSONValue: compactJSONValues))
        }
        let deleted = deleting == nil ? nil : Int(try result.int64(0, 10))
        return ClaimBatch(snapshot: snapshot, rows: rows, databaseNowMicros: databaseNowMicros, deleted: deleted)
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
                    topics: inout TopicNames, reserved: [[UInt8]]? = nil, compactJSONValue: Bool = false) throws(PGError) -> ClaimedRow {
        let reserved = reserved ?? shape.reservedHeaderNames
        let id = try result.int64(r, 1)
        let shard = try result.int32(r, 2)
        let topic = topics.name(result, r, 3)
        let created = try result.timestampMicros(r, 6) + postgresEpochOffsetMicros
        // Size the message's one buffer once: key, value, headers and outbox-id. The headers'
        // JSON text bounds their unescaped bytes plus a NUL per name (each member spends at
        // least `"":` on its name), and its colons bound the number of headers.
        let headersNull = result.isNull(r, 7)
        let headersLength = result.length(r, 7)
        var headerCount = 1
        if !headersNull { result.withRawValue(r, 7) { for c in $0 where c == UInt8(ascii: ":") { headerCount += 1 } } }
        let capacity = result.length(r, 4) + result.length(r, 5) + headersLength + ClaimedRow.idHeader.utf8.count + 21
        func keyAndValue(headerCapacity: Int) -> KafkaMessage {
            var m = KafkaMessage(topic: topic, capacity: capacity, headerCapacity: headerCapacity)
            if !result.isNull(r, 4) { result.withRawValue(r, 4) { m.setKey($0) } }
            if !result.isNull(r, 5) {
                result.withRawValue(r, 5) { raw in
                    if compactJSONValue {
                        let compact = JSONText.compact(raw)
                        compact.withUnsafeBytes { m.setValue($0) }
                    } else {
                        m.setValue(raw)
                    }
                }
            }
            return m
        }
        var message = keyAndValue(headerCapacity: headerCount)
        var rowHeaders: [String?] = []
        var unreadable: String?
        if !headersNull {
            let active = shape.isActive
            do {
                try result.withRawValue(r, 7) { text throws(HeaderJSON.Malformed) in
                    try HeaderJSON.forEachMember(text, scratch: &scratch) { name, value in
                        // The relay's own headers win: a row may not forge its outbox-id.
                        for n in reserved where n.elementsEqual(name) { return }
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
        let delay = try result.int64(r, 8)
        return ClaimedRow(id: id, shard: shard, createdAtMicros: created, message: message, notBeforeDelayMillis: delay,
                          unreadable: unreadable)
    }

    /// Keeps the notification gate open for `millis` from now (database clock): inserting
    /// transactions NOTIFY until then.
    /// Returns the value set (to close the gate with later, if no other replica renewed it) and,
    /// with `takingXid` (a gate that was closed), an xid the statement took after setting it:
    /// every transaction that had its xid before the gate opened has a lower one (WakeMode's
    /// follow-up). The subquery runs the `setval` before the outer query takes the xid.
    ///
    /// `routed`: this replica holds only some shards, so notifications must name the row's shard
    /// (an odd value; even otherwise: the trigger leaves the payload empty, which wakes every
    /// listener). A replica whose holding changes declares again at once (`Relay.waitWhenCaughtUp`);
    /// a stale even gate only wakes listeners for rows of other replicas' shards.
    public func openNotificationGate(_ conn: PGConnection, forMillis millis: Int64,
                                     takingXid: Bool = false, routed: Bool = true) throws(PGError) -> (value: Int64, xid: UInt64?) {
        // `& -2 | $2`: the time with its lowest bit replaced by `routed` (never 0, closed).
        let setval = """
            SELECT setval(\(quoteLiteral(table.notifyUntilSQL))::regclass,
                          greatest((\(OutboxTable.gateClockSQL) + $1) & -2 | $2, 1)) AS v
            """
        let parameters: [PGParameter] = [.int8(millis), .int8(routed ? 1 : 0)]
        guard takingXid else {
            return (try conn.execute(prepared: "outbox_notify_gate", setval, parameters).int64(0, 0), nil)
        }
        let result = try conn.execute(prepared: "outbox_notify_gate_xid", """
            SELECT s.v, pg_current_xact_id()::text::bigint FROM (\(setval) OFFSET 0) AS s
            """, parameters)
        return (try result.int64(0, 0), UInt64(try result.int64(0, 1)))
    }

    /// Closes the gate this replica opened at `value`, unless another replica has renewed it
    /// since (then it stays open for that replica). A close notifies `gate-closed`: another
    /// replica may have declared the gate before this one's declaration and still be sleeping on
    /// it (its renewal would have changed the value); it opens the gate again at once.
    public func closeNotificationGate(_ conn: PGConnection, openedAt value: Int64) throws(PGError) {
        _ = try conn.execute(prepared: "outbox_notify_gate_close", """
            SELECT setval(\(quoteLiteral(table.notifyUntilSQL))::regclass, 0), pg_notify($2, $3)
            FROM \(table.notifyUntilSQL) WHERE last_value = $1
            """, [.int8(value), .text(table.channel), .text(OutboxTable.gateClosedPayload)])
    }

    /// Closes a declaration that ran out more than `graceMillis` ago (its replica died or
    /// stopped while waiting for notifications, or could not close it): the trigger's `WHEN`
    /// only tests for a declared gate, so until then every INSERT would call the function to
    /// find the time past. Like a close it notifies `gate-closed`: a replica that declared the
    /// gate between this statement's read and its `setval` opens it again. Returns whether it
    /// closed one.
    @discardableResult
    public func clearLapsedNotificationGate(_ conn: PGConnection, graceMillis: Int64 = 1000) throws(PGError) -> Bool {
        try conn.execute(prepared: "outbox_notify_gate_lapsed", """
            SELECT setval(\(quoteLiteral(table.notifyUntilSQL))::regclass, 0), pg_notify($2, $3)
            FROM \(table.notifyUntilSQL)
            WHERE last_value > 0 AND last_value < \(OutboxTable.gateClockSQL) - $1
            """, [.int8(graceMillis), .text(table.channel), .text(OutboxTable.gateClosedPayload)]).rowCount > 0
    }

    /// Deletes acknowledged rows whose lease this replica still holds at `epochs[shard]`.
    /// Returns the number of rows deleted (fewer than `ids.count` means leases were lost).
    /// Many ids are deleted with the lease table read once (``deleteManySQL``), a few with a
    /// lease lookup per row; both delete exactly the same rows.
    public func delete(_ conn: PGConnection, ids: [Int64], owner: String, epochs: [Int64]) throws(PGError) -> Int {
        let many = ids.count >= Self.deleteManyFrom
        return try conn.execute(prepared: many ? "outbox_delete_many" : "outbox_delete", many ? deleteManySQL : deleteSQL,
                                [.int8Array(ids), .text(owner), .int8Array(epochs)]).affectedRows
    }

    /// ``delete(_:ids:owner:epochs:)`` for rows acknowledged before a lost connection: a row is
    /// deleted only if its `created_at` (µs since 1970) is one of `createdAtMicros` too. After an
    /// asynchronous failover the new primary hands out ids again, so such an id may name a row
    /// inserted after the failover, which this relay never produced; it was created later than
    /// every row of the lost timeline. (A set test, not pairs: cheap for the few rows in flight at
    /// a lost connection, and a new row's `created_at` matches none of them.)
    public func deleteChecked(_ conn: PGConnection, ids: [Int64], createdAtMicros: [Int64], owner: String, epochs: [Int64]) throws(PGError) -> Int {
        try conn.execute(prepared: "outbox_delete_checked", deleteCheckedSQL,
                         [.int8Array(ids), .text(owner), .int8Array(epochs), .int8Array(createdAtMicros)]).affectedRows
    }
}
