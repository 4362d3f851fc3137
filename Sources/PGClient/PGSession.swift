import CLibPQ
import Foundation

/// A PostgreSQL connection pinned to its own thread, reconnecting on demand.
///
/// Every method is synchronous inside the actor and the actor runs on a dedicated
/// ``ThreadExecutor``, so there is no suspension point between libpq calls: the actor cannot
/// re-enter and start a second statement on the same `PGconn`.
public actor PGSession {
    private let executor: ThreadExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    /// The session's thread as a task executor (see `withTaskExecutorPreference`).
    public nonisolated var taskExecutor: any TaskExecutor { executor }

    private let url: String
    private let applicationName: String
    private let setup: @Sendable (PGConnection) throws(PGError) -> Void
    private var connection: PGConnection?

    /// - Parameters:
    ///   - setup: run on every new connection (session settings such as `statement_timeout`).
    public init(url: String, applicationName: String, label: String,
                setup: @escaping @Sendable (PGConnection) throws(PGError) -> Void = { _ in }) {
        self.url = url
        self.applicationName = applicationName
        self.setup = setup
        self.executor = ThreadExecutor(name: "pg-\(label)")
    }

    /// Runs `body` with a live connection (connecting first if needed). A connection-loss error
    /// drops the connection so the next call reconnects; the error is rethrown.
    public func withConnection<T: Sendable>(_ body: @Sendable (PGConnection) throws(PGError) -> T) throws(PGError) -> T {
        try run(body)
    }

    private func run<T>(_ body: (PGConnection) throws(PGError) -> T) throws(PGError) -> T {
        let conn: PGConnection
        if let c = connection, c.isOpen {
            conn = c
        } else {
            connection?.close()
            connection = nil
            let c = try PGConnection(url: url, applicationName: applicationName)
            try setup(c)
            connection = c
            conn = c
        }
        do {
            return try body(conn)
        } catch {
            if error.isConnectionLoss || !conn.isOpen {
                conn.close()
                connection = nil
            }
            throw error
        }
    }

    /// How a ``waitThenRun(timeout:interrupt:accept:_:)`` wait ended.
    public enum WaitOutcome: Sendable, Equatable {
        /// A notification that `accept` took arrived (or had arrived during the last statement).
        case notified
        /// The interrupt was signalled; the body did not run.
        case interrupted
        case timedOut
    }

    /// Waits on the session's thread — for a notification on the connection that `accept` takes
    /// (the connection must LISTEN: `setup` can), for `interrupt`, or for `timeout` seconds —
    /// and then, unless interrupted, runs `body` at once, on the same thread.
    ///
    /// For a caller that sleeps until notified and then runs a statement: with a listener thread
    /// of its own, that is the listener woken, then a thread of the caller's executor, then this
    /// one; here it is this thread alone. `accept` runs on this thread for every notification
    /// (for its side effects too) and says whether it ends the wait. Nothing else can run on the
    /// session meanwhile.
    ///
    /// `linger`: once notified, wait this much longer before running `body`, so that what
    /// commits meanwhile is read by the same statement. Notifications that arrive during it are
    /// not woken for; they are offered to `accept` (for their side effects) just before `body`
    /// runs, whose statement sees what they announced. `interrupt` ends the linger early and is
    /// left signalled: `body` runs, and the caller's next wait ends at once.
    public func waitThenRun<T: Sendable>(timeout: Double, linger: Double = 0, interrupt: WaitInterrupt,
                                         accept: @Sendable (PGConnection.Notification) -> Bool,
                                         _ body: @Sendable (PGConnection) throws(PGError) -> T) throws(PGError) -> (WaitOutcome, T?) {
        try run { conn throws(PGError) -> (WaitOutcome, T?) in
            let outcome = try Self.wait(conn, timeout: timeout, interrupt: interrupt, accept: accept)
            if outcome == .interrupted { return (outcome, nil) }
            if outcome == .notified, linger > 0 {
                Self.linger(linger, interrupt: interrupt)
                _ = try Self.anyAccepted(conn, accept)
            }
            return (outcome, try body(conn))
        }
    }

    /// Sleeps `seconds`, or until `interrupt` is signalled (left signalled), whichever is first:
    /// one wake-up, to the nanosecond (ppoll).
    private static func linger(_ seconds: Double, interrupt: WaitInterrupt) {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(min(seconds, 60) * 1_000_000_000)
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return }
            // The signal stays for the caller's next wait. -1 is EINTR: wait out the rest.
            if outbox_wait_readable(interrupt.readEnd, Int64(deadline - now)) > 0 { return }
        }
    }

    /// ``waitThenRun(timeout:linger:interrupt:accept:_:)`` without a body: for a caller that
    /// prepares its statement after the wait (it runs next, on this thread, before any
    /// notification that comes meanwhile is read).
    public func wait(timeout: Double, linger: Double = 0, interrupt: WaitInterrupt,
                     accept: @Sendable (PGConnection.Notification) -> Bool) throws(PGError) -> WaitOutcome {
        try waitThenRun(timeout: timeout, linger: linger, interrupt: interrupt, accept: accept) { _ throws(PGError) in () }.0
    }

    private static func wait(_ conn: PGConnection, timeout: Double, interrupt: WaitInterrupt,
                             accept: (PGConnection.Notification) -> Bool) throws(PGError) -> WaitOutcome {
        // What arrived during the last statement (libpq has read it already) counts first;
        // anything since makes the socket readable for the poll below.
        if try Self.anyAccepted(conn, readingSocket: false, accept) { return .notified }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, min(timeout, 86_400)) * 1_000_000_000)
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return .timedOut }
            var fds = [pollfd(fd: conn.socket, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: interrupt.readEnd, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, Int32((deadline - now + 999_999) / 1_000_000))
            if n < 0 { continue }  // EINTR
            if fds[1].revents != 0 {
                interrupt.reset()
                return .interrupted
            }
            if fds[0].revents != 0 {
                if try Self.anyAccepted(conn, accept) { return .notified }
                if !conn.isOpen { throw PGError(.connectionLost, message: "connection lost while waiting for notifications") }
            }
        }
    }

    /// Reads the connection's notifications (`readingSocket` false: only those libpq has read
    /// already), offers each to `accept`; whether any was taken.
    private static func anyAccepted(_ conn: PGConnection, readingSocket: Bool = true,
                                    _ accept: (PGConnection.Notification) -> Bool) throws(PGError) -> Bool {
        let notes = readingSocket ? try conn.drainNotifications() : try conn.receivedNotifications()
        return notes.reduce(false) { accept($1) || $0 }
    }

    /// Sleeps `seconds` on the session's thread (uninterrupted), for a caller that is about to
    /// run a statement on it: instead of a timer thread woken, then a thread of the caller's
    /// executor, then this one, it is this thread alone. Nothing else can run on the session
    /// meanwhile.
    public func pause(seconds: Double) {
        guard seconds > 0 else { return }
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - seconds.rounded(.down)) * 1_000_000_000))
        var left = timespec()
        while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
    }

    /// Closes the connection and lets the session's thread end.
    public func close() {
        connection?.close()
        connection = nil
        executor.shutdown()
    }
}
