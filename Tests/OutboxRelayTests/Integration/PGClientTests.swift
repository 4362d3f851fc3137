import Foundation
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

/// `PGSession.waitThenRun`: the claim session's sleep until notified (Relay.claimLoop). Each way a
/// wait can end, and the ways it must not: a notification the filter refuses, a signal sent
/// before the wait began, a notification that came during the previous statement.
@Suite(.serialized) struct PGSessionWaitTests {
    static func session(_ channel: String) -> PGSession {
        PGSession(url: TestEnvironment.databaseURL, applicationName: "outbox-relay-tests", label: "wait-test") { conn throws(PGError) in
            try conn.executeScript("LISTEN \(quoteIdentifier(channel))")
        }
    }

    @Test func aWaitEndsOnAnAcceptedNotificationAndRunsTheBodyThen() async throws {
        let channel = "wait_test_\(Int.random(in: 0..<1_000_000))"
        let session = Self.session(channel)
        defer { Task { await session.close() } }
        let interrupt = WaitInterrupt()
        // Connect (and LISTEN) first.
        _ = try await session.withConnection { conn throws(PGError) in try conn.query("SELECT 1") }
        let notifier = try TestEnvironment.connect()
        let seen = CallCounter()
        Task.detached {
            try await Task.sleep(nanoseconds: 100_000_000)
            // Refused by the filter: the wait goes on. Then an accepted one ends it.
            try notifier.query("SELECT pg_notify($1, 'ignore-me')", [.text(channel)])
            try await Task.sleep(nanoseconds: 100_000_000)
            try notifier.query("SELECT pg_notify($1, 'wake')", [.text(channel)])
        }
        let started = ContinuousClock.now
        let (outcome, value) = try await session.waitThenRun(timeout: 30, interrupt: interrupt, accept: { note in
            seen.add()
            return note.payload == "wake"
        }) { conn throws(PGError) in try conn.query("SELECT 42::int4").int32(0, 0) }
        #expect(outcome == .notified)
        #expect(value == 42, "the body ran after the notification")
        #expect(seen.value == 2, "both notifications were offered to the filter")
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    @Test func anInterruptEndsTheWaitWithoutRunningTheBodyEvenWhenSentBefore() async throws {
        let session = Self.session("wait_test_\(Int.random(in: 0..<1_000_000))")
        defer { Task { await session.close() } }
        let interrupt = WaitInterrupt()
        let ran = CallCounter()
        // Signalled before the wait began: kept until reset.
        interrupt.signal()
        let (early, _) = try await session.waitThenRun(timeout: 30, interrupt: interrupt, accept: { _ in true }) { _ throws(PGError) in ran.add() }
        #expect(early == .interrupted)
        // Signalled while waiting.
        Task.detached {
            try await Task.sleep(nanoseconds: 100_000_000)
            interrupt.signal()
        }
        let (late, _) = try await session.waitThenRun(timeout: 30, interrupt: interrupt, accept: { _ in true }) { _ throws(PGError) in ran.add() }
        #expect(late == .interrupted)
        #expect(ran.value == 0)
        // A reset forgets a signal: the next wait runs to its timeout and then the body.
        interrupt.signal()
        interrupt.reset()
        let (timed, _) = try await session.waitThenRun(timeout: 0.2, interrupt: interrupt, accept: { _ in true }) { _ throws(PGError) in ran.add() }
        #expect(timed == .timedOut)
        #expect(ran.value == 1)
    }

    @Test func aNotificationThatCameDuringTheLastStatementEndsTheNextWaitAtOnce() async throws {
        let channel = "wait_test_\(Int.random(in: 0..<1_000_000))"
        let session = Self.session(channel)
        defer { Task { await session.close() } }
        // The session's own statement notifies: libpq reads the notification with its result.
        _ = try await session.withConnection { conn throws(PGError) in try conn.query("SELECT pg_notify($1, 'early')", [.text(channel)]) }
        let (outcome, _) = try await session.waitThenRun(timeout: 30, interrupt: WaitInterrupt(), accept: { $0.payload == "early" }) { _ throws(PGError) in }
        #expect(outcome == .notified)
    }

    /// A claim reads the notifications that came while its statement ran without reading the
    /// socket again (`receivedNotifications`): PostgreSQL sends a session's pending notifications
    /// before the ReadyForQuery that ends a statement, and libpq reads up to that before the
    /// statement returns. Here the statement waits on a lock until another session has notified.
    @Test func notificationsThatCameWhileAStatementRanAreReadWithItsResult() async throws {
        let channel = "during_test_\(Int.random(in: 0..<1_000_000))"
        let listener = Shared(try TestEnvironment.connect())
        try listener.value.executeScript("LISTEN \(quoteIdentifier(channel))")
        let holder = try TestEnvironment.connect()
        let admin = try TestEnvironment.connect()
        let key = Int64.random(in: 1..<Int64.max)
        _ = try holder.query("SELECT pg_advisory_lock($1)", [.int8(key)])
        let statement = Task.detached { () throws -> Void in
            _ = try listener.value.query("SELECT pg_advisory_xact_lock($1)", [.int8(key)])
        }
        // Notify only once the statement runs (waits for the lock).
        let waiting = "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1"
        while try !admin.query(waiting, [.int4(listener.value.backendPID)]).bool(0, 0) {
            try await Task.sleep(nanoseconds: 5_000_000)
        }
        _ = try admin.query("SELECT pg_notify($1, 'during')", [.text(channel)])
        _ = try holder.query("SELECT pg_advisory_unlock($1)", [.int8(key)])
        try await statement.value
        #expect(try listener.value.receivedNotifications().map(\.payload) == ["during"])
        #expect(try listener.value.drainNotifications().isEmpty)
    }

    /// A connection handed to one task at a time.
    final class Shared<T>: @unchecked Sendable {
        let value: T
        init(_ value: T) { self.value = value }
    }

    /// The claim loop's linger (ClaimPacer): once notified, the body waits; what is announced
    /// meanwhile is offered to the filter before the body runs (whose statement sees it), and
    /// does not end the next wait.
    /// A connected session that LISTENs, and a way to notify its channel from another connection.
    static func listening() async throws -> (session: PGSession, notify: Notifier) {
        let channel = "wait_test_\(Int.random(in: 0..<1_000_000))"
        let session = Self.session(channel)
        _ = try await session.withConnection { conn throws(PGError) in try conn.query("SELECT 1") }
        return (session, Notifier(try TestEnvironment.connect(), channel: channel))
    }

    /// Notifies one channel; used by one task at a time.
    final class Notifier: @unchecked Sendable {
        let conn: PGConnection
        let channel: String
        init(_ conn: PGConnection, channel: String) { (self.conn, self.channel) = (conn, channel) }
        func callAsFunction(_ payload: String) throws { _ = try conn.query("SELECT pg_notify($1, $2)", [.text(channel), .text(payload)]) }
    }

    @Test func aLingerRunsTheBodyLaterAndSwallowsWhatWasAnnouncedMeanwhile() async throws {
        let (session, notify) = try await Self.listening()
        defer { Task { await session.close() } }
        let seen = CallCounter()
        Task.detached {
            try await Task.sleep(nanoseconds: 100_000_000)
            try notify("first")
            try await Task.sleep(nanoseconds: 300_000_000)
            try notify("second")
        }
        let started = ContinuousClock.now
        let (outcome, seenByBody) = try await session.waitThenRun(timeout: 30, linger: 1.0, interrupt: WaitInterrupt(), accept: { _ in
            seen.add()
            return true
        }) { _ throws(PGError) in seen.value }
        let elapsed = ContinuousClock.now - started
        #expect(outcome == .notified)
        #expect(elapsed >= .milliseconds(1_050), "the body ran a linger after the first notification (\(elapsed))")
        #expect(elapsed < .seconds(10))
        #expect(seenByBody == 2, "the notification that came during the linger was taken before the body ran")
        let (next, _) = try await session.waitThenRun(timeout: 0.3, interrupt: WaitInterrupt(), accept: { _ in true }) { _ throws(PGError) in }
        #expect(next == .timedOut, "nothing announced before the body ran ends the next wait")
    }

    @Test func anInterruptEndsALingerRunsTheBodyAndStaysForTheNextWait() async throws {
        let (session, notify) = try await Self.listening()
        defer { Task { await session.close() } }
        let interrupt = WaitInterrupt()
        Task.detached {
            try await Task.sleep(nanoseconds: 100_000_000)
            try notify("wake")
            try await Task.sleep(nanoseconds: 200_000_000)
            interrupt.signal()
        }
        let started = ContinuousClock.now
        let (outcome, value) = try await session.waitThenRun(timeout: 30, linger: 60, interrupt: interrupt, accept: { _ in true }) { conn throws(PGError) in
            try conn.query("SELECT 7::int4").int32(0, 0)
        }
        #expect(outcome == .notified && value == 7, "the notification's body runs")
        #expect(ContinuousClock.now - started < .seconds(20), "the interrupt cut the 60 s linger short")
        let (next, _) = try await session.waitThenRun(timeout: 30, interrupt: interrupt, accept: { _ in true }) { _ throws(PGError) in }
        #expect(next == .interrupted, "the signal is left for the caller's next wait")
    }

    @Test func aConnectionKilledDuringTheWaitIsAConnectionLossAndTheNextCallReconnects() async throws {
        let session = Self.session("wait_test_\(Int.random(in: 0..<1_000_000))")
        defer { Task { await session.close() } }
        let pid = try await session.withConnection { conn throws(PGError) in conn.backendPID }
        let admin = try TestEnvironment.connect()
        Task.detached {
            try await Task.sleep(nanoseconds: 100_000_000)
            try admin.query("SELECT pg_terminate_backend($1)", [.int4(pid)])
        }
        await #expect {
            _ = try await session.waitThenRun(timeout: 30, interrupt: WaitInterrupt(), accept: { _ in true }) { _ throws(PGError) in }
        } throws: { error in
            (error as? PGError)?.isConnectionLoss == true
        }
        let again = try await session.withConnection { conn throws(PGError) in conn.backendPID }
        #expect(again != pid)
    }
}

/// A thread-safe count for the closures above.
final class CallCounter: @unchecked Sendable {
    private var n = 0
    private let lock = NSLock()
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}
