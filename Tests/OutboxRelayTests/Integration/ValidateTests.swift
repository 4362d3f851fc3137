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
}
