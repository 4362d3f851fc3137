import OutboxRelay
import PGClient
import Testing

@Suite struct PGClientTests {
    @Test func binaryParametersRoundTrip() throws {
        let conn = try TestEnvironment.connect()
        let r = try conn.query("SELECT $1::bigint, $2::bytea, $3::text, $4::bigint[], $5::jsonb ->> 'a', $6::bytea IS NULL, cardinality($7::bigint[])", [
            .int8(-42), .bytea([0, 1, 255, 0]), .text("grüße"), .int8Array([1, -2, 1 << 40]), .jsonb("{\"a\": \"b\"}"),
            .bytea(nil), .int8Array([]),
        ])
        #expect(try r.int64(0, 0) == -42)
        #expect(r.bytes(0, 1) == [0, 1, 255, 0])
        #expect(r.string(0, 2) == "grüße")
        #expect(r.string(0, 4) == "b")
        #expect(try r.bool(0, 5))
        #expect(try r.int32(0, 6) == 0)
        let arr = try conn.query("SELECT ARRAY['x', NULL, 'z']::text[]")
        #expect(try arr.textArray(0, 0) == ["x", nil, "z"])
    }

    @Test func errorsCarrySQLState() throws {
        let conn = try TestEnvironment.connect()
        #expect {
            try conn.query("SELECT * FROM no_such_table_\(Int.random(in: 0..<1_000_000))")
        } throws: { error in
            (error as? PGError)?.sqlState == "42P01" && (error as? PGError)?.isConnectionLoss == false
        }
        // The connection is still usable after a statement error.
        #expect(try conn.query("SELECT 1::int4").int32(0, 0) == 1)
    }

    @Test func aTerminatedBackendIsAConnectionLoss() throws {
        let victim = try TestEnvironment.connect()
        let admin = try TestEnvironment.connect()
        try admin.query("SELECT pg_terminate_backend($1)", [.int4(victim.backendPID)])
        #expect {
            try victim.query("SELECT 1")
        } throws: { error in
            (error as? PGError)?.isConnectionLoss == true
        }
    }

    @Test func connectionErrorsNeverShowThePassword() {
        #expect {
            try PGConnection(url: "postgresql://someone:hunter2-secret@127.0.0.1:1/db", applicationName: "t", connectTimeoutSeconds: 2)
        } throws: { error in
            !"\(error)".contains("hunter2-secret") && (error as? PGError)?.isConnectionLoss == true
        }
        #expect(Redaction.redact("postgresql://u:pw%40x@h:5/d?sslmode=require&password=abc") == "postgresql://u:***@h:5/d?sslmode=require&password=***")
    }

    @Test func sessionsReconnectAfterConnectionLoss() async throws {
        let session = PGSession(url: TestEnvironment.databaseURL, applicationName: "outbox-relay-tests", label: "test")
        let pid = try await session.withConnection { conn throws(PGError) in conn.backendPID }
        let admin = try TestEnvironment.connect()
        try admin.query("SELECT pg_terminate_backend($1)", [.int4(pid)])
        await #expect(throws: PGError.self) {
            try await session.withConnection { conn throws(PGError) in try conn.query("SELECT 1").rowCount }
        }
        let again = try await session.withConnection { conn throws(PGError) in conn.backendPID }
        #expect(again != pid)
        await session.close()
    }
}
