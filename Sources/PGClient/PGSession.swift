import Foundation

/// A PostgreSQL connection pinned to its own thread, reconnecting on demand.
///
/// Every method is synchronous inside the actor and the actor runs on a dedicated
/// ``ThreadExecutor``, so there is no suspension point between libpq calls: the actor cannot
/// re-enter and start a second statement on the same `PGconn`.
public actor PGSession {
    private let executor: ThreadExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

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

    /// Closes the connection and lets the session's thread end.
    public func close() {
        connection?.close()
        connection = nil
        executor.shutdown()
    }
}
