import PGClient

/// What the relay needs to know about a migrated table, read at start-up.
public struct OutboxSchemaInfo: Sendable {
    public let shardCount: Int
    public let schemaVersion: Int
    /// The table has the notification gate (`migrate` of this version): the relay then polls
    /// while busy and asks for notifications only while idle. Without it every insert notifies.
    public var notificationGate = false
    /// The replicas table has the `busy` column (`migrate` since the load spread): replicas
    /// publish how busy they are, and `--shard-spread load` can act on it.
    public var replicaBusy = false
}

/// Start-up checks: the table and the relay's tables exist with the shape this version expects.
/// Errors name the table or column at fault and suggest `outbox-relay migrate`.
public enum SchemaCheck {
    /// Expected columns of the outbox table and their types (`format_type` spelling).
    public static let expectedColumns: [(String, String)] = [
        ("id", "bigint"), ("txid", "xid8"), ("topic", "text"), ("key", "bytea"), ("value", "bytea"), ("headers", "jsonb"),
        ("created_at", "timestamp with time zone"), ("attempts", "integer"),
        ("last_error", "text"), ("not_before", "timestamp with time zone"),
    ]

    /// Expected columns of `t` in its layout: name and type, or nil where any type will do (the
    /// application's columns a Debezium mapping reads).
    public static func expectedColumns(_ t: OutboxTable) -> [(String, String?)] {
        switch t.layout {
        case .native:
            return expectedColumns.map { ($0.0, $0.1) }
        case .debezium(let r):
            let relay: [(String, String?)] = [
                ("outbox_relay_id", "bigint"), ("txid", "xid8"), ("shard", "integer"), ("created_at", "timestamp with time zone"),
                ("attempts", "integer"), ("last_error", "text"), ("not_before", "timestamp with time zone"),
            ]
            return relay + r.columns.map { ($0, nil) }
        }
    }

    /// What a command is about to do, hence which privileges it needs.
    public enum Purpose: Sendable {
        /// `run`: claim, delete, record attempts, dead-letter, lease, heartbeat.
        case relay
        /// `status`, `dead-letter list`, `validate`: read only — a monitoring role with SELECT.
        case read
        /// `dead-letter purge`.
        case purgeDeadLetters
        /// `dead-letter requeue`: back into the outbox as new rows.
        case requeueDeadLetters
    }

    /// Privileges the relay's database user needs, per table.
    public static func requiredPrivileges(_ t: OutboxTable) -> [(String, [String])] {
        requiredPrivileges(t, for: .relay)
    }

    /// Privileges a command needs, per table (README, "Privileges").
    public static func requiredPrivileges(_ t: OutboxTable, for purpose: Purpose) -> [(String, [String])] {
        let read: [(String, [String])] = [(t.sql, ["SELECT"]), (t.deadLetterSQL, ["SELECT"]), (t.leasesSQL, ["SELECT"]),
                                          (t.replicasSQL, ["SELECT"]), (t.metaSQL, ["SELECT"])]
        switch purpose {
        case .relay:
            return [(t.sql, ["SELECT", "DELETE", "UPDATE"]), (t.notifyUntilSQL, ["UPDATE"]), (t.deadLetterSQL, ["SELECT", "INSERT"]),
                    (t.leasesSQL, ["SELECT", "UPDATE"]), (t.replicasSQL, ["SELECT", "INSERT", "UPDATE", "DELETE"]),
                    (t.metaSQL, ["SELECT"])]
        case .read:
            return read
        case .purgeDeadLetters:
            return read + [(t.deadLetterSQL, ["DELETE"])]
        case .requeueDeadLetters:
            return read + [(t.deadLetterSQL, ["DELETE"]), (t.sql, ["INSERT"])]
        }
    }

    /// Refuses — before doing anything — when a privilege is missing, naming the GRANT.
    static func checkPrivileges(_ conn: PGConnection, table: OutboxTable, for purpose: Purpose = .relay) throws {
        let user = try conn.query("SELECT current_user::text").string(0, 0) ?? "?"
        for (relation, privileges) in requiredPrivileges(table, for: purpose) {
            // The notification gate is optional (a table not yet migrated by this version).
            if relation == table.notifyUntilSQL,
               !(try conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(relation)]).bool(0, 0)) { continue }
            for privilege in privileges {
                let ok = try conn.query("SELECT has_table_privilege($1::text::regclass, $2)", [.text(relation), .text(privilege)]).bool(0, 0)
                if !ok {
                    throw RelayError(.schema, "database user \"\(user)\" lacks \(privilege) on \(relation): GRANT \(privilege) ON \(relation) TO \(quoteIdentifier(user))")
                }
            }
        }
    }

    public static func check(_ conn: PGConnection, table: OutboxTable, for purpose: Purpose = .relay) throws(RelayError) -> OutboxSchemaInfo {
        let hint = "run `outbox-relay migrate --table \(table)` first"
        do {
            for (label, sql) in [("outbox table", table.sql), ("relay table", table.metaSQL),
                                 ("relay table", table.leasesSQL), ("relay table", table.replicasSQL),
                                 ("dead-letter table", table.deadLetterSQL)] {
                let exists = try conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(sql)]).bool(0, 0)
                if !exists {
                    throw RelayError(.schema, "\(label) \(sql) does not exist: \(hint)")
                }
            }
            // The layout first: a table migrated with another layout has other columns.
            if let stored = try conn.query("SELECT coalesce(to_jsonb(m) ->> 'layout', 'native') FROM \(table.metaSQL) AS m").string(0, 0),
               stored != table.layout.name {
                throw RelayError(.configuration, "table \(table) was migrated with --layout \(stored), not \(table.layout.name): give --layout \(stored)")
            }
            let cols = try conn.query("""
                SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
                """, [.text(table.sql)])
            var found: [String: String] = [:]
            for r in 0..<cols.rowCount { found[cols.string(r, 0) ?? ""] = cols.string(r, 1) ?? "" }
            for (column, type) in expectedColumns(table) {
                guard let actual = found[column] else {
                    throw RelayError(.schema, "table \(table) has no column \"\(column)\" (\(type ?? "read by the \(table.layout.name) layout")): \(hint)")
                }
                if let type, actual != type {
                    throw RelayError(.schema, "column \"\(column)\" of table \(table) is \(actual), expected \(type): \(hint)")
                }
            }
            let meta = try conn.query("SELECT shard_count, schema_version FROM \(table.metaSQL)")
            guard meta.rowCount == 1 else { throw RelayError(.schema, "\(table.metaSQL) has no row: \(hint)") }
            var info = OutboxSchemaInfo(shardCount: Int(try meta.int32(0, 0)), schemaVersion: Int(try meta.int32(0, 1)))
            info.notificationGate = try conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(table.notifyUntilSQL)]).bool(0, 0)
            info.replicaBusy = try conn.query(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'busy' AND NOT attisdropped)",
                [.text(table.replicasSQL)]).bool(0, 0)
            if info.schemaVersion > Migration.schemaVersion {
                throw RelayError(.schema, "table \(table) has schema version \(info.schemaVersion), newer than this relay's \(Migration.schemaVersion): upgrade the relay")
            }
            if info.schemaVersion < Migration.schemaVersion {
                throw RelayError(.schema, "table \(table) has schema version \(info.schemaVersion), older than this relay's \(Migration.schemaVersion): \(hint)")
            }
            if table.layout == .native,
               !(try conn.query("SELECT to_regprocedure($1) IS NOT NULL", [.text(table.shardFunctionSignatureSQL)]).bool(0, 0)) {
                throw RelayError(.schema, "function \(table.shardFunctionSignatureSQL), which gives a row's shard, does not exist: \(hint)")
            }
            let leaseRows = try conn.query("SELECT count(*) FROM \(table.leasesSQL)").int64(0, 0)
            if leaseRows != info.shardCount {
                throw RelayError(.schema, "\(table.leasesSQL) has \(leaseRows) shards, expected \(info.shardCount): \(hint)")
            }
            if let problem = try ClaimInvariants.problems(conn, table: table).first {
                throw RelayError(.schema, "\(problem.problem); fix: \(problem.fix)")
            }
            try checkPrivileges(conn, table: table, for: purpose)
            return info
        } catch let error as RelayError {
            throw error
        } catch let error as PGError {
            throw RelayError(database: error, context: "checking table \(table)")
        } catch {
            throw RelayError(.internalState, "\(error)")
        }
    }
}
