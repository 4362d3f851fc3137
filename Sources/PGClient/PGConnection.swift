import CLibPQ
import Foundation

/// One libpq connection. Synchronous and not thread-safe: a `PGConnection` must never be used
/// by two threads at once. Use it from a ``PGSession`` (an actor pinned to its own thread).
///
/// - Important: `PQfinish` is called exactly once, in `close()` or `deinit`, also after a failed connect.
public final class PGConnection {
    private var handle: OpaquePointer?
    private var prepared: Set<String> = []

    /// Opens a connection. `url` is a libpq URI or conninfo string; every libpq option
    /// (`sslmode`, `sslrootcert`, …) passes through it. The URL is never logged or echoed.
    public init(url: String, applicationName: String, connectTimeoutSeconds: Int = 5) throws(PGError) {
        // Refuse a URL libpq would echo parts of, and learn its password (removed by value from
        // every message from now on).
        try ConnectionString.inspect(url)
        if let password = ProcessInfo.processInfo.environment["PGPASSWORD"] { Secrets.register(password) }
        // expand_dbname=1 makes libpq treat the "dbname" value as a full connection string.
        // Our values come first so that anything the URL sets wins (later keywords override).
        // tcp_user_timeout: a request whose packets go unacknowledged (a network that drops
        // them) fails after 30 s instead of the kernel's ~15 minutes of retransmissions;
        // keepalives do the same for an idle connection whose peer vanished.
        let keys = ["application_name", "connect_timeout", "keepalives", "keepalives_idle",
                    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "dbname"]
        let values = [applicationName, String(connectTimeoutSeconds), "1", "10", "5", "3", "30000", url]
        let conn: OpaquePointer? = withCStringArray(keys) { k in
            withCStringArray(values) { v in PQconnectdbParams(k, v, 1) }
        }
        guard let conn else { throw PGError(.connectionFailed, message: "libpq could not allocate a connection") }
        if PQstatus(conn) != CONNECTION_OK {
            let message = Self.trimmed(PQerrorMessage(conn))
            PQfinish(conn)
            throw PGError(.connectionFailed, message: message)
        }
        // Server notices (e.g. "already exists, skipping") are not errors; keep stderr clean.
        PQsetNoticeProcessor(conn, { _, _ in }, nil)
        handle = conn
    }

    deinit { close() }

    /// Closes the connection; safe to call twice.
    public func close() {
        if let h = handle { PQfinish(h) }
        handle = nil
        prepared.removeAll()
    }

    public var isOpen: Bool {
        guard let h = handle else { return false }
        return PQstatus(h) == CONNECTION_OK
    }

    /// The server's process id for this connection (for `pg_terminate_backend` in tests).
    public var backendPID: Int32 { handle.map { PQbackendPID($0) } ?? 0 }

    /// The socket descriptor, for waiting on notifications.
    public var socket: Int32 { handle.map { PQsocket($0) } ?? -1 }

    private func live() throws(PGError) -> OpaquePointer {
        guard let h = handle else { throw PGError(.connectionLost, message: "connection is closed") }
        return h
    }

    /// Runs one or more statements with no parameters (text protocol); results are discarded.
    /// Meant for DDL and session settings.
    public func executeScript(_ sql: String) throws(PGError) {
        let h = try live()
        // PQexec returns only the last result; errors stop the script.
        guard let res = PQexec(h, sql) else { throw connectionError(h) }
        defer { PQclear(res) }
        try check(res, h)
    }

    /// Runs one statement with binary parameters and binary results.
    @discardableResult
    public func query(_ sql: String, _ parameters: [PGParameter] = []) throws(PGError) -> PGResult {
        let h = try live()
        let res = withEncodedParameters(parameters) { types, values, lengths, formats in
            PQexecParams(h, sql, Int32(parameters.count), types, values, lengths, formats, 1)
        }
        return try wrap(res, h)
    }

    /// Prepares `sql` under `name` once per connection (again after a reconnect, since a new
    /// `PGConnection` starts with an empty cache), then executes it.
    @discardableResult
    public func execute(prepared name: String, _ sql: String, _ parameters: [PGParameter]) throws(PGError) -> PGResult {
        let h = try live()
        if !prepared.contains(name) {
            let types = parameters.map { Oid($0.oid) }
            let res = types.withUnsafeBufferPointer { PQprepare(h, name, sql, Int32(types.count), $0.baseAddress) }
            let wrapped = try wrap(res, h)
            _ = wrapped
            prepared.insert(name)
        }
        let res = withEncodedParameters(parameters, types: false) { _, values, lengths, formats in
            PQexecPrepared(h, name, Int32(parameters.count), values, lengths, formats, 1)
        }
        return try wrap(res, h)
    }

    // MARK: LISTEN/NOTIFY

    /// A notification received on this connection.
    public struct Notification: Sendable, Equatable {
        public let channel: String
        public let payload: String
        public let senderPID: Int32
    }

    /// Reads what arrived on the socket and returns the queued notifications (each freed with `PQfreemem`).
    public func drainNotifications() throws(PGError) -> [Notification] {
        let h = try live()
        if PQconsumeInput(h) == 0 {
            throw PGError(.connectionLost, message: Self.trimmed(PQerrorMessage(h)))
        }
        return Self.queuedNotifications(h)
    }

    /// The notifications libpq has already read, without reading the socket: right after a
    /// statement, those that reached the server while it ran. PostgreSQL sends a session's
    /// pending notifications before the ReadyForQuery that ends a statement outside a transaction
    /// block, and libpq reads up to that before the statement returns; what comes later arrives
    /// on an idle connection, and makes the socket readable for whoever waits on it next. (A
    /// `PQconsumeInput` here was a `recv` that found nothing nearly every time: one system call
    /// per claim.)
    public func receivedNotifications() throws(PGError) -> [Notification] {
        Self.queuedNotifications(try live())
    }

    private static func queuedNotifications(_ h: OpaquePointer) -> [Notification] {
        var out: [Notification] = []
        while let n = PQnotifies(h) {
            let note = n.pointee
            out.append(Notification(channel: String(cString: note.relname),
                                    payload: note.extra.map { String(cString: $0) } ?? "",
                                    senderPID: note.be_pid))
            PQfreemem(n)
        }
        return out
    }

    // MARK: Helpers

    private func wrap(_ res: OpaquePointer?, _ h: OpaquePointer) throws(PGError) -> PGResult {
        guard let res else { throw connectionError(h) }
        let result = PGResult(res)  // owns and clears res
        try check(res, h)
        return result
    }

    private func check(_ res: OpaquePointer, _ h: OpaquePointer) throws(PGError) {
        switch PQresultStatus(res) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY, PGRES_SINGLE_TUPLE:
            return
        default:
            let state = PQresultErrorField(res, outbox_pg_diag_sqlstate).map { String(cString: $0) }
            var message = PQresultErrorField(res, outbox_pg_diag_message_primary).map { String(cString: $0) }
                ?? Self.trimmed(PQresultErrorMessage(res))
            if message.isEmpty { message = Self.trimmed(PQerrorMessage(h)) }
            if state == nil && PQstatus(h) != CONNECTION_OK {
                throw PGError(.connectionLost, message: message.isEmpty ? "connection lost" : message)
            }
            throw PGError(.queryFailed, sqlState: state, message: message)
        }
    }

    private func connectionError(_ h: OpaquePointer) -> PGError {
        let message = Self.trimmed(PQerrorMessage(h))
        return PGError(PQstatus(h) == CONNECTION_OK ? .protocolViolation : .connectionLost,
                       message: message.isEmpty ? "no result from server" : message)
    }

    static func trimmed(_ c: UnsafePointer<CChar>?) -> String {
        guard let c else { return "" }
        return String(cString: c).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Encodes parameters into one contiguous buffer and hands libpq the arrays it wants. Only the
/// value bytes go to the heap; the per-parameter arrays (types, pointers, lengths, formats) are
/// temporary stack allocations — a claim runs this per statement, and building five arrays and
/// destroying them was a few per cent of the claim thread's CPU. `types`: also pass the
/// parameters' type OIDs (PQprepare / PQexecParams; PQexecPrepared ignores them).
private func withEncodedParameters<R>(
    _ parameters: [PGParameter], types wantTypes: Bool = true,
    _ body: (UnsafePointer<Oid>?, UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R
) -> R {
    let n = parameters.count
    if n == 0 { return body(nil, nil, nil, nil) }
    var buffer: [UInt8] = []
    buffer.reserveCapacity(16 * n)
    // ints[0 ..< n]: lengths; ints[n ..< 2n]: formats (all binary).
    return withUnsafeTemporaryAllocation(of: Int32.self, capacity: 2 * n) { ints in
        withUnsafeTemporaryAllocation(of: Int.self, capacity: n) { offsets in
            for k in 0..<n {
                let start = buffer.count
                if parameters[k].encode(into: &buffer) {
                    offsets[k] = start
                    ints[k] = Int32(buffer.count - start)
                } else {
                    offsets[k] = -1
                    ints[k] = 0
                }
                ints[n + k] = 1
            }
            if buffer.isEmpty { buffer.append(0) }  // a valid base address for zero-length values
            return buffer.withUnsafeBytes { raw in
                let base = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
                return withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: n) { values in
                    for k in 0..<n { values[k] = offsets[k] < 0 ? nil : UnsafePointer(base + offsets[k]) }
                    let lengths = UnsafePointer(ints.baseAddress!), formats = UnsafePointer(ints.baseAddress! + n)
                    guard wantTypes else { return body(nil, UnsafePointer(values.baseAddress), lengths, formats) }
                    return withUnsafeTemporaryAllocation(of: Oid.self, capacity: n) { types in
                        for k in 0..<n { types[k] = Oid(parameters[k].oid) }
                        return body(UnsafePointer(types.baseAddress), UnsafePointer(values.baseAddress), lengths, formats)
                    }
                }
            }
        }
    }
}

/// Builds a NULL-terminated `const char *const *` from Swift strings for the duration of `body`.
func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let duplicated: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
    defer { duplicated.forEach { free($0) } }
    return duplicated.withUnsafeBufferPointer { buffer in
        buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) { body($0) }
    }
}
