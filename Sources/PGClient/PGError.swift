import CLibPQ
import Foundation

/// An error from libpq or the PostgreSQL server.
///
/// The description carries the server's primary message and SQLSTATE only: never SQL parameters,
/// row payloads or connection strings (which may contain passwords).
public struct PGError: Error, CustomStringConvertible, Sendable {
    /// What failed, independent of the server's wording.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: String, Sendable {
            case connectionFailed, connectionLost, queryFailed, protocolViolation, unexpectedResult
        }
        fileprivate let base: Base
        private init(_ base: Base) { self.base = base }
        /// Could not establish a connection.
        public static let connectionFailed = Code(.connectionFailed)
        /// An established connection broke.
        public static let connectionLost = Code(.connectionLost)
        /// The server rejected a statement (see `sqlState`).
        public static let queryFailed = Code(.queryFailed)
        /// libpq returned something this client cannot interpret.
        public static let protocolViolation = Code(.protocolViolation)
        /// The result had an unexpected shape (column count, type, NULL).
        public static let unexpectedResult = Code(.unexpectedResult)
        public var description: String { base.rawValue }
    }

    public let code: Code
    /// The five-character SQLSTATE, when the server sent one.
    public let sqlState: String?
    /// Server (or libpq) message, secrets removed.
    public let message: String
    public let file: String
    public let line: Int

    public init(_ code: Code, sqlState: String? = nil, message: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.sqlState = sqlState
        self.message = Redaction.redact(message)
        self.file = file
        self.line = line
    }

    /// The connection is gone and should be re-established: SQLSTATE class 08, 57P01–57P03,
    /// or a failure with no SQLSTATE at all (crash-stop, refused connection).
    public var isConnectionLoss: Bool {
        if code == .connectionFailed || code == .connectionLost { return true }
        guard let s = sqlState else { return code == .queryFailed }
        return s.hasPrefix("08") || s == "57P01" || s == "57P02" || s == "57P03"
    }

    /// An established connection broke (a terminated backend, a restart), as opposed to one that
    /// could not be made at all: worth retrying even where an unreachable server is refused.
    public var isBrokenConnection: Bool { code != .connectionFailed && isConnectionLoss }

    /// A momentary condition of a working server, not a wrong setting: a statement or lock
    /// timeout under load, too many connections, a server starting up, or a retriable conflict.
    /// Worth retrying where a bad configuration is refused at once (start-up checks).
    public var isTransient: Bool {
        guard let s = sqlState else { return false }
        return ["57014", "55P03", "53300", "57P03", "40001", "40P01"].contains(s)
    }

    /// Serialization failure or deadlock: retry the transaction.
    public var isTransactionRetriable: Bool { sqlState == "40001" || sqlState == "40P01" }

    public var description: String {
        if let s = sqlState { return "\(message) (SQLSTATE \(s))" }
        return message
    }
}

/// Removes secrets from text that may have come from a connection string or URL: every value
/// registered in ``Secrets``, then `password=…` pairs and URL user-info passwords by pattern.
public enum Redaction {
    /// Replaces `password=…` pairs and the password part of `scheme://user:password@host` URLs.
    public static func redact(_ text: String) -> String {
        // First every secret this process knows, by value (see ``Secrets``); then the patterns.
        var out = Secrets.redact(text)
        // URL user-info: scheme://user:secret@host
        if let schemeRange = out.range(of: "://") {
            let afterScheme = out[schemeRange.upperBound...]
            if let at = afterScheme.firstIndex(of: "@") {
                let userInfo = afterScheme[..<at]
                if !userInfo.contains("/"), let colon = userInfo.firstIndex(of: ":") {
                    out.replaceSubrange(out.index(after: colon)..<at, with: "***")
                }
            }
        }
        // keyword=value forms (conninfo strings, URL query parameters)
        for key in ["password=", "sslpassword="] {
            var searchStart = out.startIndex
            while let r = out.range(of: key, options: [.caseInsensitive], range: searchStart..<out.endIndex) {
                var end = r.upperBound
                while end < out.endIndex, !" &;\n'\"".contains(out[end]) { end = out.index(after: end) }
                out.replaceSubrange(r.upperBound..<end, with: "***")
                searchStart = out.index(r.upperBound, offsetBy: 3, limitedBy: out.endIndex) ?? out.endIndex
            }
        }
        return out
    }

    /// A URL fit for logs: the password (user-info or query parameter) replaced with `***`.
    public static func redactURL(_ url: String) -> String { redact(url) }
}
