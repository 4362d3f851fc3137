import Foundation
import OutboxRelay
import PGClient
import Testing

@Suite struct ValidateTests {
    @Test func aFreshMigrationHasNoDifferencesAndEachDriftIsNamedWithItsFix() throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)
        try conn.executeScript("""
            DROP TRIGGER \(quoteIdentifier(table.notifyTriggerName)) ON \(table.sql);
            ALTER TABLE \(table.sql) DROP COLUMN not_before;
            ALTER TABLE \(table.sql) RESET (autovacuum_vacuum_scale_factor);
            """)
        let diffs = try SchemaValidation.differences(conn, table: table)
        #expect(diffs.count == 3, "\(diffs)")
        #expect(diffs.contains { $0.problem.contains("trigger") && $0.fix.contains("CREATE OR REPLACE TRIGGER") })
        #expect(diffs.contains { $0.problem.contains("not_before") && $0.fix.contains("ADD COLUMN not_before") })
        #expect(diffs.contains { $0.problem.contains("autovacuum_vacuum_scale_factor") && $0.fix.contains("ALTER TABLE") })
        // Applying the printed fixes makes the table valid again.
        for d in diffs { try conn.executeScript(d.fix) }
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)

        // An older migration's trigger, whose WHEN compared the gate with the clock: it works (the
        // function tests the clock again), and validate names it with a fix that brings the
        // function along.
        try conn.executeScript("""
            CREATE OR REPLACE TRIGGER \(quoteIdentifier(table.notifyTriggerName)) AFTER INSERT ON \(table.sql) FOR EACH ROW
            WHEN (pg_sequence_last_value(\(quoteLiteral(table.notifyUntilSQL))::regclass) > (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
            EXECUTE FUNCTION \(table.notifyFunctionSQL)();
            """)
        let older = try SchemaValidation.differences(conn, table: table)
        #expect(older.count == 1 && older[0].problem.contains("clock") && older[0].fix.contains("CREATE OR REPLACE FUNCTION")
                && older[0].fix.contains("CREATE OR REPLACE TRIGGER"), "\(older)")
        for d in older { try conn.executeScript(d.fix) }
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)
    }

    /// Schema version 2 stored each row's shard in a generated column; version 3 computes it
    /// with `<table>_shard(key, id)`. A version-2 table is refused until `migrate` adds the
    /// function (the column stays: replicas of version 2 may still read it), the function gives
    /// every row the shard its column holds (a key's rows must stay in the shard they were in),
    /// the planner inlines it, and `validate` names the leftover column with its fix.
    @Test func aVersion2TableWithAStoredShardIsConvertedAndKeepsEveryRowsShard() throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        #expect(try conn.query("SELECT count(*) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'shard'",
                               [.text(table.sql)]).int64(0, 0) == 0, "a new table stores no shard")
        // Back to version 2: the stored column (version 2's expression, verbatim), no function.
        try conn.executeScript("""
            ALTER TABLE \(table.sql) ADD COLUMN shard integer NOT NULL GENERATED ALWAYS AS (CASE WHEN key IS NULL THEN (id % 256)::integer ELSE ((('x' || substr(md5(key), 1, 8))::bit(32)::integer & 2147483647) % 256) END) STORED;
            DROP FUNCTION \(table.shardFunctionSignatureSQL);
            UPDATE \(table.metaSQL) SET schema_version = 2;
            INSERT INTO \(table.sql) (topic, key) SELECT 't', CASE WHEN i % 7 = 0 THEN NULL ELSE convert_to('key-' || i, 'UTF8') END
            FROM generate_series(1, 2000) AS i;
            INSERT INTO \(table.sql) (topic, key) VALUES ('t', ''::bytea), ('t', '\\xff00'::bytea);
            """)
        do {
            _ = try SchemaCheck.check(conn, table: table)
            Issue.record("a version-2 table was accepted")
        } catch {
            #expect(error.message.contains("schema version 2") && error.message.contains("migrate"), "\(error)")
        }
        try Migration.run(on: conn, table: table)
        _ = try SchemaCheck.check(conn, table: table)
        let r = try conn.query("""
            SELECT count(*), count(*) FILTER (WHERE shard IS DISTINCT FROM \(table.shardSQL("o"))), count(DISTINCT shard)
            FROM \(table.sql) AS o
            """)
        #expect(try r.int64(0, 0) == 2002)
        #expect(try r.int64(0, 1) == 0, "every row keeps its shard")
        #expect(try r.int64(0, 2) == 256, "the rows spread over every shard")
        let plan = try conn.query("EXPLAIN (VERBOSE, COSTS OFF) SELECT \(table.shardSQL("o")) FROM \(table.sql) AS o")
        let text = try (0..<plan.rowCount).map { i throws(PGError) in try plan.string(i, 0) ?? "" }.joined(separator: "\n")
        #expect(text.contains("md5") && !text.contains("\(table.name)_shard"), "the planner inlines the shard function: \(text)")
        // validate: the leftover column, and nothing else; its fix leaves none.
        let diffs = try SchemaValidation.differences(conn, table: table)
        #expect(diffs.count == 1 && diffs[0].problem.contains("schema version 2") && diffs[0].fix.contains("DROP COLUMN shard"), "\(diffs)")
        for d in diffs { try conn.executeScript(d.fix) }
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)
        // A missing function is named with the statement that makes it.
        try conn.executeScript("DROP FUNCTION \(table.shardFunctionSignatureSQL)")
        let missing = try SchemaValidation.differences(conn, table: table)
        #expect(missing.count == 1 && missing[0].fix.contains("CREATE OR REPLACE FUNCTION \(table.shardFunctionSQL)"), "\(missing)")
        #expect(throws: RelayError.self) { try SchemaCheck.check(conn, table: table) }
        for d in missing { try conn.executeScript(d.fix) }
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)
    }
}
