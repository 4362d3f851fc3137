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
    }
}
