import CLibPQ
import Foundation
import Synchronization

/// LISTENs on channels over its own connection, on a thread it owns, and reports each
/// notification as it arrives (blocking in `poll(2)` on the socket, no sleep loop).
///
/// Notifications are hints: they are lost while reconnecting, so after every (re)connect the
/// handler is called with `nil` ("you may have missed something"), and callers keep a poll timer.
public final class PGListener: Sendable {
    public typealias Handler = @Sendable (PGConnection.Notification?) -> Void

    private let url: String
    private let applicationName: String
    private let channels: [String]
    private let handler: Handler
    private let onError: @Sendable (PGError) -> Void
    private let state = Mutex<(stopping: Bool, started: Bool)>((false, false))
    private let wake = WaitInterrupt()
    private let finished = Mutex<Bool>(false)
    private let finishedCondition = NSCondition()

    /// - Parameters:
    ///   - channels: channel names, quoted as identifiers when LISTENing.
    public init(url: String, applicationName: String, channels: [String],
                onError: @escaping @Sendable (PGError) -> Void = { _ in },
                handler: @escaping Handler) {
        self.url = url
        self.applicationName = applicationName
        self.channels = channels
        self.handler = handler
        self.onError = onError
    }

    /// Starts the listener thread.
    public func start() {
        let go = state.withLock { s -> Bool in
            if s.started { return false }
            s.started = true
            return true
        }
        guard go else { return }
        let thread = Thread { [self] in nameCurrentThread("pg-listen"); run() }
        thread.name = "pg-listen"
        thread.start()
    }

    /// Stops the thread and waits for it to close its connection.
    public func stop() {
        let wasStarted = state.withLock { s -> Bool in
            s.stopping = true
            return s.started
        }
        wake.signal()
        guard wasStarted else { return }
        finishedCondition.lock()
        while !finished.withLock({ $0 }) { finishedCondition.wait() }
        finishedCondition.unlock()
    }

    private var stopping: Bool { state.withLock { $0.stopping } }

    private func run() {
        defer {
            finishedCondition.lock()
            finished.withLock { $0 = true }
            finishedCondition.broadcast()
            finishedCondition.unlock()
        }
        var backoffMs = 50
        while !stopping {
            do {
                let conn = try PGConnection(url: url, applicationName: applicationName)
                defer { conn.close() }
                for channel in channels {
                    try conn.executeScript("LISTEN \(quoteIdentifier(channel))")
                }
                backoffMs = 50
                handler(nil)
                try listen(on: conn)
            } catch {
                if stopping { return }
                onError(error)
                waitForWake(timeoutMs: backoffMs)
                backoffMs = min(backoffMs * 2, 5_000)
            }
        }
    }

    private func listen(on conn: PGConnection) throws(PGError) {
        while !stopping {
            var fds = [pollfd(fd: conn.socket, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake.readEnd, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, 30_000)
            if stopping { return }
            if n < 0 { continue }  // EINTR
            if fds[0].revents != 0 || n == 0 {
                // On timeout, consuming input still detects a dead connection.
                for note in try conn.drainNotifications() { handler(note) }
                if !conn.isOpen { throw PGError(.connectionLost, message: "listener connection lost") }
            }
        }
    }

    private func waitForWake(timeoutMs: Int) {
        var fds = [pollfd(fd: wake.readEnd, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 1, Int32(timeoutMs))
    }
}

/// Quotes an SQL identifier (doubling embedded quotes).
public func quoteIdentifier(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

/// Quotes an SQL string literal so that no text can escape it, whatever the session's
/// `standard_conforming_strings`: quotes are doubled, and text with a backslash becomes an
/// escape string (`E'…'`, backslashes doubled), which reads the same under both settings.
public func quoteLiteral(_ text: String) -> String {
    let quoted = text.replacingOccurrences(of: "'", with: "''")
    if text.contains("\\") {
        return "E'" + quoted.replacingOccurrences(of: "\\", with: "\\\\") + "'"
    }
    return "'" + quoted + "'"
}

/// Dollar-quotes `body` with a tag that does not occur in it (`$outbox_relay$`, else
/// `$outbox_relay_1$`, …), so that no name embedded in the body can close the quote early.
public func dollarQuote(_ body: String) -> String {
    var tag = "$outbox_relay$"
    var n = 0
    while body.contains(tag) {
        n += 1
        tag = "$outbox_relay_\(n)$"
    }
    return tag + body + tag
}
