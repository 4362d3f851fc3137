import PGClient

/// Creates (idempotently) the outbox table and the relay's own tables.
///
/// Design notes:
/// - `id` is `GENERATED ALWAYS AS IDENTITY` on a `CACHE 1` sequence and `txid` is the inserting
///   transaction's `pg_current_xact_id()`, indexed: the claim protocol's invariants
///   (``ClaimInvariants``, docs/DESIGN.md). An existing table that breaks them is refused with the
///   statements that fix it, never silently adopted; one created by schema version 1 is converted.
/// - A row's shard is a hash of its key (or its id for a NULL key), so every row of one key lands
///   in one shard and one lease owner relays it. Native layout: computed where it is needed by
///   `<table>_shard(key, id)` (schema version 3; a stored generated column until version 2).
/// - A statement-level trigger notifies the relay's channel with a constant payload; PostgreSQL
///   folds identical notifications of one transaction into one.
public enum Migration {
    /// Version of the relay's schema objects this build expects.
    public static let schemaVersion = 3
    public static let defaultShardCount = 256

    /// Autovacuum settings for a high-churn queue table: vacuum after a fixed number of dead
    /// rows rather than a fraction of the table, without cost-based sleeping.
    public static let autovacuumSettings = [
        ("autovacuum_vacuum_scale_factor", "0"),
        ("autovacuum_vacuum_threshold", "5000"),
        ("autovacuum_vacuum_insert_scale_factor", "0"),
        ("autovacuum_vacuum_insert_threshold", "50000"),
        ("autovacuum_analyze_scale_factor", "0"),
        ("autovacuum_analyze_threshold", "50000"),
        ("autovacuum_vacuum_cost_delay", "0"),
    ]

    /// The stored shard of a row: a hash of its key's bytes (`key`, an SQL expression of bytea),
    /// or its `id` modulo the shard count for a NULL key.
    static func shardExpression(shards: Int, key: String = "key", id: String = "id") -> String {
        "CASE WHEN \(key) IS NULL THEN (\(id) % \(shards))::integer " +
        "ELSE ((('x' || substr(md5(\(key)), 1, 8))::bit(32)::integer & 2147483647) % \(shards)) END"
    }

    /// The native layout's shard function (schema version 3): ``shardExpression(shards:key:id:)``
    /// of its arguments. Until version 3 the table stored it as a generated column, and computing
    /// it cost every INSERT about 24 us of PostgreSQL CPU (of 160; `scripts/bench --scenarios
    /// insert_cost`): PostgreSQL prepares a stored generated expression again for every INSERT
    /// statement. Now the statements that need a row's shard — a claim's filter, the lease check
    /// of a DELETE, the trigger while the gate is open — compute it. The SQL-standard body is
    /// parsed once, here, with its functions and operators resolved (no search_path at call
    /// time), and the planner inlines it: prepared statements pay the expression per row read,
    /// not a function call. Same values as the version-2 column, which a converted table keeps
    /// (`validate` suggests dropping it once every replica runs version 3).
    static func shardFunctionSQL(_ t: OutboxTable, shards: Int) -> String {
        "CREATE OR REPLACE FUNCTION \(t.shardFunctionSQL)(key bytea, id bigint) RETURNS integer " +
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN \(shardExpression(shards: shards));"
    }

    /// One notification per inserted row, naming its shard (`shards:17`), so that only its owner
    /// claims. PostgreSQL folds identical notifications of one transaction into one: a
    /// transaction's rows notify once per shard they wrote.
    ///
    /// The row-level form (since issue 13) costs a single-row INSERT about 0.1 ms of PostgreSQL
    /// CPU less than the statement-level one with a transition table, whose query over the new
    /// rows (two DISTINCT aggregates) ran for every INSERT while the gate was open (pgbench at
    /// 100 rows/s over 16 sessions and the bench's steady state, durable commits;
    /// docs/BENCHMARKS.md, *The row-level trigger*). A bulk INSERT pays about 1-3 us per row more
    /// than it did (the `WHEN` and, with the gate open, the call run per row). The function
    /// still serves a statement-level trigger of an older migration (`TG_LEVEL`), with that
    /// trigger's payload (`shards:3,17`, `*` past WakeFilter.maxListed) and its own gate test
    /// (the oldest triggers have no `WHEN`), until `migrate` replaces the trigger.
    ///
    /// The row's shard goes into the payload only while the gate's value is odd: a replica that
    /// holds only some shards declares it so (``OutboxQueries/openNotificationGate(_:forMillis:takingXid:routed:)``).
    /// A lone listener holding every shard — a single replica, or the claiming one of a quiet
    /// group under the load spread, whose standbys do not listen — declares it even, and its
    /// notifications carry an empty payload, which wakes every listener (``WakeFilter``). The
    /// shard's `md5` and its text cost a notifying INSERT about 8 us in a loop, more at a trickle.
    static func notifyFunctionSQL(_ t: OutboxTable) -> String {
        """
        CREATE OR REPLACE FUNCTION \(t.notifyFunctionSQL)() RETURNS trigger LANGUAGE plpgsql AS \(dollarQuote("""

        BEGIN
            -- Notify only while a replica waits for notifications (it keeps this sequence at a
            -- future time while it does): NOTIFY serializes committing transactions, so a busy
            -- relay polls instead. The row-level trigger's WHEN has seen a gate declared (not 0);
            -- whether its time has come is tested here, where a closed gate's INSERTs never go.
            IF TG_LEVEL = 'ROW' THEN
                IF pg_sequence_last_value(\(quoteLiteral(t.notifyUntilSQL))::regclass) > \(OutboxTable.gateClockSQL) THEN
                    -- A condition, not PERFORM: PL/pgSQL evaluates a simple expression directly,
                    -- while PERFORM runs a query (3.5 us more per notifying INSERT). The row's
                    -- shard only if the gate is odd: some listener holds only some shards.
                    IF pg_notify(\(quoteLiteral(t.channel)),
                                 CASE WHEN pg_sequence_last_value(\(quoteLiteral(t.notifyUntilSQL))::regclass) & 1 = 1
                                      THEN '\(WakeFilter.payloadPrefix)' || \(t.shardSQL("NEW")) ELSE '' END) IS NULL THEN
                        NULL;
                    END IF;
                END IF;
            ELSIF (SELECT last_value FROM \(t.notifyUntilSQL)) > \(OutboxTable.gateClockSQL) THEN
                PERFORM pg_notify(\(quoteLiteral(t.channel)),
                    CASE WHEN count(DISTINCT \(t.shardSQL("n"))) > \(WakeFilter.maxListed) THEN '*'
                         ELSE '\(WakeFilter.payloadPrefix)' || string_agg(DISTINCT \(t.shardSQL("n"))::text, ',') END)
                FROM outbox_relay_new_rows AS n HAVING count(*) > 0;
            END IF;
            RETURN NULL;
        END

        """));
        """
    }

    /// The notification gate (see OutboxTable.notifyUntilSQL), readable by every inserting role.
    static func notifySequenceSQL(_ t: OutboxTable) -> String {
        """
        CREATE SEQUENCE IF NOT EXISTS \(t.notifyUntilSQL) MINVALUE 0 START 0;
        GRANT SELECT ON SEQUENCE \(t.notifyUntilSQL) TO PUBLIC;
        """
    }

    /// The trigger's `WHEN` tests the gate, so that while the gate is closed (a busy relay polls)
    /// an INSERT does not run the PL/pgSQL function at all: single-row INSERTs at 1000 rows/s cost
    /// the inserting backend about 15-35 us less each (four interleaved pairs, durable commits;
    /// docs/BENCHMARKS.md). A never-set gate reads NULL: closed. Row-level: see
    /// ``notifyFunctionSQL(_:)``. `CREATE OR REPLACE` turns an older migration's statement-level
    /// trigger into this one in place.
    ///
    /// The `WHEN` only asks whether a gate is declared (not 0), and the function compares the
    /// declaration with the clock: PostgreSQL reads a trigger's `WHEN` from its stored node tree
    /// and prepares it again for every statement, and the clock comparison (five functions and a
    /// numeric constant) made that cost a single-row INSERT about 7 us more than `> 0` does
    /// (50 000 INSERT statements in a loop: +10.5 us against no trigger, +3.5 us with `> 0`).
    /// A declaration that ran out is cleared by the replicas' heartbeats
    /// (``OutboxQueries/clearLapsedNotificationGate(_:)``), so a replica that died declared does
    /// not leave every INSERT calling the function.
    static func notifyTriggerSQL(_ t: OutboxTable) -> String {
        "CREATE OR REPLACE TRIGGER \(quoteIdentifier(t.notifyTriggerName)) AFTER INSERT ON \(t.sql) FOR EACH ROW " +
        "WHEN (pg_sequence_last_value(\(quoteLiteral(t.notifyUntilSQL))::regclass) > 0) " +
        "EXECUTE FUNCTION \(t.notifyFunctionSQL)();"
    }

    static func autovacuumSQL(_ t: OutboxTable) -> String {
        "ALTER TABLE \(t.sql) SET (\(autovacuumSettings.map { "\($0.0) = \($0.1)" }.joined(separator: ", ")));"
    }

    /// The migration script for `table` with `shards` shards; `run` takes the advisory lock first.
    public static func script(for table: OutboxTable, shards: Int) -> String {
        if case .debezium(let routing) = table.layout { return debeziumScript(for: table, routing: routing, shards: shards) }
        let t = table
        return """
        \(metaScript(t, shards: shards))
        \(shardFunctionSQL(t, shards: shards))
        CREATE TABLE IF NOT EXISTS \(t.sql) (
            id bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME \(t.sequenceSQL) CACHE 1),
            txid xid8 NOT NULL DEFAULT \(ClaimInvariants.txidDefault),
            topic text NOT NULL CHECK (topic <> ''),
            key bytea,
            value bytea,
            headers jsonb CHECK (headers IS NULL OR jsonb_typeof(headers) = 'object'),
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            PRIMARY KEY (id)
        );
        \(claimColumnsAndRelayTablesScript(t, shards: shards))
        """
    }

    /// What both layouts add last: `not_before` (new since schema version 1), the claim
    /// protocol's `txid` and its index, the schema version, and the relay's own tables.
    static func claimColumnsAndRelayTablesScript(_ t: OutboxTable, shards: Int) -> String {
        """
        ALTER TABLE \(t.sql) ADD COLUMN IF NOT EXISTS not_before timestamptz NOT NULL DEFAULT now();
        \(ClaimInvariants.txidColumnSQL(t))
        \(ClaimInvariants.txidIndexSQL(t))
        UPDATE \(t.metaSQL) SET schema_version = \(schemaVersion) WHERE schema_version < \(schemaVersion);
        \(relayTablesScript(t, shards: shards))
        """
    }

    /// The meta table, with the layout the outbox was migrated with.
    static func metaScript(_ t: OutboxTable, shards: Int) -> String {
        """
        CREATE SCHEMA IF NOT EXISTS \(quoteIdentifier(t.schema));
        CREATE TABLE IF NOT EXISTS \(t.metaSQL) (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            shard_count integer NOT NULL CHECK (shard_count > 0),
            schema_version integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO \(t.metaSQL) (shard_count, schema_version) VALUES (\(shards), \(schemaVersion))
            ON CONFLICT (singleton) DO NOTHING;
        ALTER TABLE \(t.metaSQL) ADD COLUMN IF NOT EXISTS layout text NOT NULL DEFAULT 'native';
        """
    }

    /// Adopts (or creates) a table in Debezium's outbox layout: the application's columns stay as
    /// they are, the relay's are added with defaults (an INSERT naming only Debezium's columns
    /// keeps working), and the relay's own tables are created as for the native layout.
    static func debeziumScript(for t: OutboxTable, routing r: DebeziumRouting, shards: Int) -> String {
        let shard = shardExpression(shards: shards, key: "\(t.bytesFunctionSQL)(\(quoteIdentifier(r.keyField)))", id: "outbox_relay_id")
        func bytes(_ type: String, _ body: String) -> String {
            "CREATE OR REPLACE FUNCTION \(t.bytesFunctionSQL)(\(type)) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS \(dollarQuote(body));"
        }
        return """
        \(metaScript(t, shards: shards))
        UPDATE \(t.metaSQL) SET layout = 'debezium';
        CREATE TABLE IF NOT EXISTS \(t.sql) (
            \(quoteIdentifier(r.idField)) uuid NOT NULL PRIMARY KEY,
            \(quoteIdentifier(r.routeByField)) varchar(255) NOT NULL,
            \(quoteIdentifier(r.keyField)) varchar(255) NOT NULL,
            "type" varchar(255) NOT NULL,
            \(quoteIdentifier(r.payloadField)) jsonb
        );
        \(bytes("bytea", "SELECT $1"))
        \(bytes("text", "SELECT convert_to($1, 'UTF8')"))
        \(bytes("jsonb", "SELECT convert_to($1::text, 'UTF8')"))
        \(bytes("json", "SELECT convert_to($1::text, 'UTF8')"))
        \(bytes("uuid", "SELECT convert_to($1::text, 'UTF8')"))
        \(ClaimInvariants.idColumnSQL(t))
        CREATE UNIQUE INDEX IF NOT EXISTS \(quoteIdentifier("\(t.name)_outbox_relay_id_idx")) ON \(t.sql) (outbox_relay_id);
        ALTER TABLE \(t.sql) ADD COLUMN IF NOT EXISTS shard integer NOT NULL GENERATED ALWAYS AS (\(shard)) STORED;
        ALTER TABLE \(t.sql) ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT clock_timestamp();
        ALTER TABLE \(t.sql) ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
        ALTER TABLE \(t.sql) ADD COLUMN IF NOT EXISTS last_error text;
        \(claimColumnsAndRelayTablesScript(t, shards: shards))
        """
    }

    /// Autovacuum, the NOTIFY trigger, and the lease, dead-letter and replica tables.
    static func relayTablesScript(_ t: OutboxTable, shards: Int) -> String {
        """
        \(autovacuumSQL(t))
        \(notifySequenceSQL(t))
        \(notifyFunctionSQL(t))
        \(notifyTriggerSQL(t))
        CREATE TABLE IF NOT EXISTS \(t.leasesSQL) (
            shard integer PRIMARY KEY,
            owner text,
            epoch bigint NOT NULL DEFAULT 0,
            expires_at timestamptz,
            acquired_at timestamptz
        );
        INSERT INTO \(t.leasesSQL) (shard) SELECT generate_series(0, \(shards - 1)) ON CONFLICT (shard) DO NOTHING;
        CREATE TABLE IF NOT EXISTS \(t.deadLetterSQL) (
            dead_letter_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id bigint NOT NULL,
            topic text NOT NULL,
            key bytea,
            value bytea,
            headers jsonb,
            created_at timestamptz NOT NULL,
            attempts integer NOT NULL,
            reason text NOT NULL,
            error_code text,
            replica text,
            dead_lettered_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS \(quoteIdentifier("\(t.name)_dead_letters_topic_idx")) ON \(t.deadLetterSQL) (topic, id);
        CREATE INDEX IF NOT EXISTS \(quoteIdentifier("\(t.name)_dead_letters_id_idx")) ON \(t.deadLetterSQL) (id);
        CREATE TABLE IF NOT EXISTS \(t.replicasSQL) (
            replica_id text PRIMARY KEY,
            hostname text,
            pid integer,
            version text,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL
        );
        ALTER TABLE \(t.replicasSQL) ADD COLUMN IF NOT EXISTS busy double precision;
        """
    }

    /// Schema version 1 keyed dead letters by the outbox id, and the move skipped a row whose id
    /// was already there (`ON CONFLICT DO NOTHING`) — after its delete, so the row vanished. Ids
    /// repeat after `TRUNCATE … RESTART IDENTITY`, a re-created table or a restore: dead letters
    /// now have a key of their own, and `id` is the (indexed, not unique) original row id.
    static func convertVersion1DeadLetters(_ conn: PGConnection, table t: OutboxTable) throws(PGError) {
        let r = try conn.query("""
            SELECT c.conname::text FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
            WHERE c.conrelid = to_regclass($1) AND c.contype = 'p' AND a.attname = 'id'
            """, [.text(t.deadLetterSQL)])
        guard r.rowCount == 1, let constraint = r.string(0, 0) else { return }
        try conn.executeScript("""
            ALTER TABLE \(t.deadLetterSQL) DROP CONSTRAINT \(quoteIdentifier(constraint));
            ALTER TABLE \(t.deadLetterSQL) ADD COLUMN dead_letter_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
            """)
    }

    /// Runs the migration in one transaction; refuses to change the shard count of an existing table.
    /// Returns the shard count in force.
    @discardableResult
    public static func run(on conn: PGConnection, table: OutboxTable, shards requested: Int? = nil) throws(RelayError) -> Int {
        if let requested, requested <= 0 || requested > 65_536 {
            throw RelayError(.configuration, "invalid --shards \(requested): must be between 1 and 65536")
        }
        var shards = requested ?? defaultShardCount
        do {
            // An existing table keeps its shard count when --shards is not given.
            if requested == nil,
               try conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(table.metaSQL)]).bool(0, 0) {
                shards = Int(try conn.query("SELECT shard_count FROM \(table.metaSQL)").int32(0, 0))
            }
        } catch {
            throw RelayError(database: error, context: "migrate \(table)")
        }
        guard shards > 0 else {
            throw RelayError(.configuration, "invalid --shards \(shards): must be between 1 and 65536")
        }
        do {
            try conn.executeScript("BEGIN")
            try conn.executeScript("SELECT pg_advisory_xact_lock(hashtext(\(quoteLiteral("outbox-relay migrate " + table.description))))")
            let tableExists = try conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(table.sql)]).bool(0, 0)
            if tableExists, table.layout == .native {
                _ = try ClaimInvariants.convertVersion1Id(conn, table: table)
            }
            if try conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(table.metaSQL)]).bool(0, 0),
               let stored = try conn.query("SELECT to_jsonb(m) ->> 'layout' FROM \(table.metaSQL) AS m").string(0, 0),
               stored != table.layout.name {
                try conn.executeScript("ROLLBACK")
                throw RelayError(.configuration, "table \(table) was migrated with --layout \(stored); it cannot change to --layout \(table.layout.name)")
            }
            if tableExists, case .debezium(let routing) = table.layout {
                let present = try conn.query("""
                    SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
                    """, [.text(table.sql)])
                let columns = Set((0..<present.rowCount).compactMap { present.string($0, 0) })
                let missing = routing.columns.filter { !columns.contains($0) }
                if !missing.isEmpty {
                    try conn.executeScript("ROLLBACK")
                    throw RelayError(.configuration, "table \(table) has no column \(missing.map { "\"\($0)\"" }.joined(separator: ", ")) that the Debezium mapping reads (set table.field.event.* / route.by.field with --debezium-option to the table's column names)")
                }
            }
            try convertVersion1DeadLetters(conn, table: table)
            try conn.executeScript(script(for: table, shards: shards))
            let problems = try ClaimInvariants.problems(conn, table: table)
            if !problems.isEmpty {
                try conn.executeScript("ROLLBACK")
                throw RelayError(.schema, "table \(table) exists but does not keep the relay's ordering invariants; nothing was changed:\n" +
                                 problems.map { "- \($0.problem)\n  fix: \($0.fix)" }.joined(separator: "\n"))
            }
            let r = try conn.query("SELECT shard_count FROM \(table.metaSQL)")
            let existing = Int(try r.int32(0, 0))
            if existing != shards {
                try conn.executeScript("ROLLBACK")
                throw RelayError(.configuration,
                    "invalid --shards \(shards): table \(table) was migrated with \(existing) shards; the shard count cannot change")
            }
            try conn.executeScript("COMMIT")
            return existing
        } catch let error as PGError {
            try? conn.executeScript("ROLLBACK")
            throw RelayError(database: error, context: "migrate \(table)")
        } catch let error as RelayError {
            throw error
        } catch {
            throw RelayError(.internalState, "migrate \(table): \(error)")
        }
    }
}
