import CLibPQ
import Foundation
import Synchronization

/// The secret values this process knows — database passwords (from the URL or conninfo, also
/// when read from a `_FILE`), SASL and other secret librdkafka properties — removed **by value**
/// from every message that leaves the process: errors, logs, `/readyz`, `status`.
///
/// Redaction by value does not depend on how libpq or librdkafka word their errors: whatever part
/// of the text echoes a secret, in whatever position, is replaced with `***`.
public enum Secrets {
    private static let known = Mutex<[String]>([])

    /// Remembers `value` (and its percent-encoded and -decoded forms) as a secret. Values shorter
    /// than 3 characters are not registered: replacing them everywhere would garble every message.
    public static func register(_ value: String) {
        var forms: Set<String> = [value]
        if let decoded = value.removingPercentEncoding { forms.insert(decoded) }
        if let encoded = value.addingPercentEncoding(withAllowedCharacters: .urlUserAllowed) { forms.insert(encoded) }
        let usable = forms.filter { $0.count >= 3 }
        guard !usable.isEmpty else { return }
        known.withLock { list in
            for f in usable where !list.contains(f) { list.append(f) }
            // Longest first, so a secret containing another is removed whole.
            list.sort { $0.count > $1.count }
        }
    }

    /// `text` with every known secret value replaced by `***`.
    public static func redact(_ text: String) -> String {
        let list = known.withLock { $0 }
        guard !list.isEmpty else { return text }
        var out = text
        for s in list where out.contains(s) { out = out.replacingOccurrences(of: s, with: "***") }
        return out
    }

    /// For tests: forget everything registered.
    public static func reset() { known.withLock { $0.removeAll() } }
}

/// Checks a libpq URL or conninfo before it reaches libpq, and registers its password.
///
/// libpq echoes parts of a string it cannot parse — an invalid percent-escape in the password, or
/// a `/` that ends the host part early and makes the rest of the password a "port" — so a
/// malformed URL is refused here with a message of our own that quotes nothing from it.
public enum ConnectionString {
    public static func inspect(_ url: String) throws(PGError) {
        if let scheme = url.range(of: "://") {
            let rest = url[scheme.upperBound...]
            if let at = rest.lastIndex(of: "@") {
                let userInfo = rest[..<at]
                if let colon = userInfo.firstIndex(of: ":") {
                    let password = String(userInfo[userInfo.index(after: colon)...])
                    Secrets.register(password)
                    if password.contains(where: { "/?#".contains($0) }) {
                        throw PGError(.connectionFailed, message:
                            "invalid database URL: the password contains '/', '?' or '#', which end the user part of a URL early; " +
                            "percent-encode them (%2F, %3F, %23) or pass the password in PGPASSWORD or with the password keyword of a key=value conninfo")
                    }
                    if password.removingPercentEncoding == nil {
                        throw PGError(.connectionFailed, message:
                            "invalid database URL: the password is not valid percent-encoding ('%' must be followed by two hex digits; write %25 for a literal '%')")
                    }
                }
            }
        }
        var errmsg: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(url, &errmsg) else {
            let detail = errmsg.map { String(cString: $0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? "unparsable"
            if let errmsg { PQfreemem(errmsg) }
            throw PGError(.connectionFailed, message: "invalid database URL or conninfo: \(detail)")
        }
        defer { PQconninfoFree(options) }
        var option = options
        while let keyword = option.pointee.keyword {
            let name = String(cString: keyword)
            if name == "password" || name == "sslpassword", let value = option.pointee.val {
                Secrets.register(String(cString: value))
            }
            option = option.advanced(by: 1)
        }
    }
}
