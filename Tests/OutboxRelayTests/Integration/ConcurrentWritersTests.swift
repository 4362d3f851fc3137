import Foundation
import OutboxRelay
import PGClient
import Testing

/// The claim protocol against a real PostgreSQL: transactions that overlap so that a snapshot
/// cannot list them, and the schema invariants the protocol relies on.
@Suite(.serialized) struct ConcurrentWritersTests {
    /// A takes its xid with a domain write, B takes the next xid and draws the lower id, A commits
    /// and is relayed, B commits later: B's xid is at or above every snapshot's xmax taken while
    /// it ran, so it is in no in-progress list. B's row must follow within a second of its commit
    /// (the poll interval is 200 ms; NOTIFY makes it milliseconds). Three times in a row.
    @Test func aTransactionAboveTheSnapshotsXmaxIsRelayedWithinASecondOfItsCommit() async throws {
        let table = try TestEnvironment.migratedTable()
        let topic = try TestEnvironment.topics(1)[0]
        let relay = try await RunningRelay.start(TestEnvironment.configuration(table: table))
        let a = try TestEnvironment.connect(), b = try TestEnvironment.connect(), observer = try TestEnvironment.connect()
        func present(_ id: Int64) throws -> Bool {
            try observer.query("SELECT count(*) FROM \(table.sql) WHERE id = $1", [.int8(id)]).int64(0, 0) == 1
        }
        var ids: Set<Int64> = []
        for round in 0..<3 {
            try a.executeScript("BEGIN")
            let xidA = try a.query("SELECT pg_current_xact_id()::text").string(0, 0) ?? ""
            try b.executeScript("BEGIN")
            let idB = try b.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'kb', 'b') RETURNING id", [.text(topic)]).int64(0, 0)
            let xidB = try b.query("SELECT pg_current_xact_id()::text").string(0, 0) ?? ""
            let idA = try a.query("INSERT INTO \(table.sql) (topic, key, value) VALUES ($1, 'ka', 'a') RETURNING id", [.text(topic)]).int64(0, 0)
            try a.executeScript("COMMIT")
            #expect(idB < idA && UInt64(xidA)! < UInt64(xidB)!, "round \(round): B drew the lower id, A the lower xid")
            // A snapshot taken now, before any other transaction completes, has xmax = A + 1 = B:
            // B runs at or above xmax and is listed nowhere. (The relay's own lease heartbeats
            // and deletes may complete a later xid first and list B; the pure tests pin the
            // unlisted case down exactly.)
            try await TestEnvironment.eventually("round \(round): A's row relayed") { try !present(idA) }
            // Let the relay claim (and settle) a few more times while B is still open.
            let claims = await relay.relay.statistics().claims
            try await TestEnvironment.eventually("round \(round): more claims while B is open") {
                await relay.relay.statistics().claims >= claims + 2
            }
            try b.executeScript("COMMIT")
            let committed = Date()
            try await TestEnvironment.eventually("round \(round): B's row relayed", timeout: 10) { try !present(idB) }
            let waited = Date().timeIntervalSince(committed)
            #expect(waited < 1.0, "round \(round): B's row took \(waited) s after its commit")
            ids.formUnion([idA, idB])
        }
        try await relay.stop()
        let v = try Verification.verify(topics: [topic], expectedIds: ids)
        #expect(v.lost.isEmpty, "\(v)")
        #expect(v.duplicates == 0, "\(v)")
    }

    @Test func anApplicationSuppliedIdIsRefusedByTheTable() throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        do {
            try conn.query("INSERT INTO \(table.sql) (id, topic) VALUES (42, 't')")
            Issue.record("an explicit id was accepted")
        } catch {
            #expect(error.sqlState == "428C9", "\(error)")
            #expect(error.message.contains("non-DEFAULT value into column"), "\(error)")
        }
    }

    @Test func migrateRefusesATableWithItsOwnIdDefaultAndChangesNothing() throws {
        let name = "foreign_\(UUID().uuidString.prefix(8).lowercased())"
        let table = try OutboxTable(name)
        let conn = try TestEnvironment.connect()
        try conn.executeScript("CREATE TABLE \(table.sql) (id bigserial PRIMARY KEY, topic text NOT NULL, key bytea, value bytea, headers jsonb)")
        do {
            try Migration.run(on: conn, table: table)
            Issue.record("a table with a bigserial id was adopted")
        } catch {
            #expect(error.message.contains("GENERATED ALWAYS AS IDENTITY"), "\(error)")
            #expect(error.message.contains("fix:"), "\(error)")
        }
        let columns = try conn.query("SELECT count(*) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
                                     [.text(table.sql)]).int64(0, 0)
        #expect(columns == 5, "nothing added to the refused table")
        #expect(try !conn.query("SELECT to_regclass($1) IS NOT NULL", [.text(table.leasesSQL)]).bool(0, 0))
    }

    @Test func aVersion1TableIsConvertedAndKeepsItsNumbering() throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        // Turn it back into schema version 1's layout, with rows.
        try conn.executeScript("""
            ALTER TABLE \(table.sql) ALTER COLUMN id DROP IDENTITY;
            DROP INDEX \(quoteIdent(table.schema)).\(quoteIdent("\(table.name)_txid_idx"));
            ALTER TABLE \(table.sql) DROP COLUMN txid;
            CREATE SEQUENCE \(table.sequenceSQL) AS bigint OWNED BY \(table.sql).id;
            ALTER TABLE \(table.sql) ALTER COLUMN id SET DEFAULT (CASE WHEN pg_current_xact_id() IS NOT NULL
                THEN nextval('\(table.sequenceSQL)'::regclass) END);
            UPDATE \(table.metaSQL) SET schema_version = 1;
            INSERT INTO \(table.sql) (topic) SELECT 't' FROM generate_series(1, 5);
            """)
        #expect(throws: RelayError.self) { try SchemaCheck.check(conn, table: table) }
        try Migration.run(on: conn, table: table)
        _ = try SchemaCheck.check(conn, table: table)
        #expect(try SchemaValidation.differences(conn, table: table).isEmpty)
        let next = try conn.query("INSERT INTO \(table.sql) (topic) VALUES ('t') RETURNING id").int64(0, 0)
        #expect(next == 6, "numbering continues")
        let stamped = try conn.query("SELECT count(*) FROM \(table.sql) WHERE txid IS NOT NULL").int64(0, 0)
        #expect(stamped == 6)
    }

    @Test func startUpAndValidateRefuseASequenceCacheAboveOne() throws {
        let table = try TestEnvironment.migratedTable()
        let conn = try TestEnvironment.connect()
        try conn.executeScript("ALTER SEQUENCE \(table.sequenceSQL) CACHE 50")
        do {
            _ = try SchemaCheck.check(conn, table: table)
            Issue.record("a CACHE 50 id sequence was accepted")
        } catch {
            #expect(error.message.contains("CACHE 50"), "\(error)")
            #expect(error.message.contains("CACHE 1;"), "names the fix: \(error)")
        }
        let differences = try SchemaValidation.differences(conn, table: table)
        #expect(differences.contains { $0.fix.contains("CACHE 1") }, "\(differences)")
        do {
            try Migration.run(on: conn, table: table)
            Issue.record("migrate finished with a CACHE 50 sequence")
        } catch {
            #expect(error.message.contains("CACHE 50"), "\(error)")
        }
    }

    private func quoteIdent(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
}
