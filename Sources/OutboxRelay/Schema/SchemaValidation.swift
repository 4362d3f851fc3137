import PGClient

/// `outbox-relay validate`: compares the table and the relay's tables with what this version
/// expects (columns, types, primary key, trigger, function, indexes, privileges, autovacuum
/// settings) and says, for each difference, the statement that fixes it.
public enum SchemaValidation {
    public struct Difference: Sendable, Codable, Equatable, CustomStringConvertible {
        public let problem: String
        public let fix: String
        public var description: String { "\(problem)\n  fix: \(fix)" }
    }

    public static func differences(_ conn: PGConnection, table t: OutboxTable) throws(PGError) -> [Difference] {
        var out: [Difference] = []
        func exists(_ sql: String) throws(PGError) -> Bool {
            try conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(sql)]).bool(0, 0)
        }
        let migrate = "outbox-relay migrate --table \(t)"
        for (label, sql) in [("outbox table", t.sql), ("relay metadata table", t.metaSQL), ("lease table", t.leasesSQL),
                             ("replica table", t.replicasSQL), ("dead-letter table", t.deadLetterSQL)] where !(try exists(sql)) {
            out.append(Difference(problem: "\(label) \(sql) is missing", fix: migrate))
        }
        guard try exists(t.sql) else { return out }

        // Columns and types.
        let cols = try conn.query("""
            SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
            WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
            """, [.text(t.sql)])
        var found: [String: String] = [:]
        for r in 0..<cols.rowCount { found[cols.string(r, 0) ?? ""] = cols.string(r, 1) ?? "" }
        for (column, expected) in SchemaCheck.expectedColumns(t) {
            let type = expected ?? "any type"
            guard let actual = found[column] else {
                let fix: String
                switch column {
                case "not_before": fix = "ALTER TABLE \(t.sql) ADD COLUMN not_before timestamptz NOT NULL DEFAULT now();"
                case "attempts": fix = "ALTER TABLE \(t.sql) ADD COLUMN attempts integer NOT NULL DEFAULT 0;"
                case "last_error": fix = "ALTER TABLE \(t.sql) ADD COLUMN last_error text;"
                case "txid": fix = ClaimInvariants.txidColumnSQL(t) + " " + ClaimInvariants.txidIndexSQL(t)
                case "headers": fix = "ALTER TABLE \(t.sql) ADD COLUMN headers jsonb CHECK (headers IS NULL OR jsonb_typeof(headers) = 'object');"
                default: fix = "recreate the table with \(migrate) (column \(column) is part of the core contract)"
                }
                out.append(Difference(problem: "column \"\(column)\" (\(type)) of \(t.sql) is missing", fix: fix))
                continue
            }
            if let expected, actual != expected {
                out.append(Difference(problem: "column \"\(column)\" of \(t.sql) is \(actual), expected \(type)",
                                      fix: "ALTER TABLE \(t.sql) ALTER COLUMN \(quoteIdentifier(column)) TYPE \(type);"))
            }
        }
        // The claim protocol's invariants (identity id with CACHE 1, txid and its index).
        if found[t.layout.idColumn] != nil || t.layout != .native {
            out += try ClaimInvariants.problems(conn, table: t).filter { !(found["txid"] == nil && $0.problem.contains("txid")) }
        }
        // The native layout's shard: the function (schema version 3), and no stored column left
        // from version 2 (same values, read by nothing since, and prepared for every INSERT).
        if t.layout == .native {
            let function = try conn.query("SELECT to_regprocedure($1) IS NOT NULL", [.text(t.shardFunctionSignatureSQL)]).bool(0, 0)
            if !function {
                let shards = try exists(t.metaSQL) ? Int(try conn.query("SELECT shard_count FROM \(t.metaSQL)").int32(0, 0)) : Migration.defaultShardCount
                out.append(Difference(problem: "function \(t.shardFunctionSignatureSQL) is missing (a row's shard)",
                                      fix: Migration.shardFunctionSQL(t, shards: shards)))
            }
            if found["shard"] != nil {
                out.append(Difference(problem: "column \"shard\" of \(t.sql) is left from schema version 2: this version computes a row's shard with \(t.shardFunctionSQL)() and reads the column nowhere, but every INSERT still computes it (about 24 us of PostgreSQL CPU of 160 in `scripts/bench --scenarios insert_cost`); drop it once no replica older than schema version 3 runs",
                                      fix: "ALTER TABLE \(t.sql) DROP COLUMN shard;"))
            }
        }
        // Primary key on id.
        let pk = try conn.query("""
            SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indrelid = $1::text::regclass AND (i.indisprimary OR i.indisunique) AND a.attname = $2
            """, [.text(t.sql), .text(t.layout.idColumn)]).int64(0, 0)
        if pk == 0, t.layout == .native {
            out.append(Difference(problem: "\(t.sql) has no primary key on id (claims and deletes need it)", fix: "ALTER TABLE \(t.sql) ADD PRIMARY KEY (id);"))
        }
        // Notification function and trigger.
        let function = try conn.query("SELECT to_regprocedure($1) IS NOT NULL", [.text(t.notifyFunctionSQL + "()")]).bool(0, 0)
        if !function {
            out.append(Difference(problem: "function \(t.notifyFunctionSQL)() is missing (no NOTIFY on insert)", fix: Migration.notifyFunctionSQL(t)))
        }
        // A trigger's fix brings this version's function with it: the row-level trigger's WHEN
        // tests only for a declared gate and leaves the clock to the function, which an older
        // function (it notified unconditionally) does not test.
        let triggerFix = Migration.notifyFunctionSQL(t) + "\n" + Migration.notifyTriggerSQL(t)
        let triggers = try conn.query("""
            SELECT count(*), count(*) FILTER (WHERE tgtype::integer & 1 = 1),
                   count(*) FILTER (WHERE pg_get_triggerdef(oid) LIKE '%clock_timestamp%')
            FROM pg_trigger
            WHERE tgrelid = $1::text::regclass AND tgname = $2 AND NOT tgisinternal AND tgenabled <> 'D'
            """, [.text(t.sql), .text(t.notifyTriggerName)])
        if try triggers.int64(0, 0) == 0 {
            out.append(Difference(problem: "trigger \(t.notifyTriggerName) on \(t.sql) is missing or disabled (an idle relay waits for its poll)",
                                  fix: triggerFix))
        } else if try triggers.int64(0, 1) == 0 {
            // An older migration's statement-level trigger: it works, at a cost (Migration.notifyFunctionSQL).
            out.append(Difference(problem: "trigger \(t.notifyTriggerName) on \(t.sql) is statement-level (an older migration): while a relay waits for notifications every INSERT runs a query over its transition table, about 0.1 ms of PostgreSQL CPU more than the row-level trigger",
                                  fix: triggerFix))
        } else if try triggers.int64(0, 2) > 0 {
            // An older migration's WHEN, which compares the gate with the clock: it works, at a
            // cost (Migration.notifyTriggerSQL).
            out.append(Difference(problem: "trigger \(t.notifyTriggerName) on \(t.sql) compares the notification gate with the clock in its WHEN (an older migration): PostgreSQL prepares a trigger's WHEN for every statement, about 6 us of PostgreSQL CPU more per single-row INSERT than this version's",
                                  fix: triggerFix))
        }
        // The notification gate (NOTIFY only while a replica waits for it).
        if !(try exists(t.notifyUntilSQL)) {
            out.append(Difference(problem: "sequence \(t.notifyUntilSQL) is missing: every insert sends a NOTIFY, which serializes the application's commits",
                                  fix: Migration.notifySequenceSQL(t) + " " + Migration.notifyFunctionSQL(t)))
        }
        // Dead-letter index.
        if try exists(t.deadLetterSQL) {
            let index = "\(quoteIdentifier(t.schema)).\(quoteIdentifier("\(t.name)_dead_letters_topic_idx"))"
            if !(try exists(index)) {
                out.append(Difference(problem: "index \(index) is missing (dead-letter list by topic scans)",
                                      fix: "CREATE INDEX \(quoteIdentifier("\(t.name)_dead_letters_topic_idx")) ON \(t.deadLetterSQL) (topic, id);"))
            }
        }
        // Autovacuum settings for a queue table.
        let options = try conn.query("SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = $1::text::regclass",
                                     [.text(t.sql)]).string(0, 0) ?? ""
        let missing = Migration.autovacuumSettings.filter { !options.split(separator: ",").contains(Substring("\($0.0)=\($0.1)")) }
        if !missing.isEmpty {
            out.append(Difference(problem: "\(t.sql) lacks the queue-table autovacuum settings \(missing.map { $0.0 }.joined(separator: ", "))",
                                  fix: Migration.autovacuumSQL(t)))
        }
        // Privileges of the current user.
        let user = try conn.query("SELECT current_user::text").string(0, 0) ?? "?"
        for (relation, privileges) in SchemaCheck.requiredPrivileges(t) where try exists(relation) {
            for privilege in privileges {
                let ok = try conn.query("SELECT has_table_privilege($1::text::regclass, $2)", [.text(relation), .text(privilege)]).bool(0, 0)
                if !ok {
                    out.append(Difference(problem: "user \"\(user)\" lacks \(privilege) on \(relation)",
                                          fix: "GRANT \(privilege) ON \(relation) TO \(quoteIdentifier(user));"))
                }
            }
        }
        // One lease row per shard.
        if try exists(t.metaSQL), try exists(t.leasesSQL) {
            let counts = try conn.query("SELECT (SELECT shard_count FROM \(t.metaSQL)), (SELECT count(*) FROM \(t.leasesSQL))")
            let shards = try counts.int32(0, 0)
            if try counts.int64(0, 1) != Int64(shards) {
                out.append(Difference(problem: "\(t.leasesSQL) does not have one row per shard (\(shards))",
                                      fix: "INSERT INTO \(t.leasesSQL) (shard) SELECT generate_series(0, \(shards - 1)) ON CONFLICT (shard) DO NOTHING;"))
            }
        }
        return out
    }
}
