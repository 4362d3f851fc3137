import Foundation
import Logging
import PGClient

/// One JSON object per line on stderr: `time` (RFC 3339 with milliseconds, UTC), `level`,
/// `message`, `logger`, `source` and the dotted metadata keys as fields. Every string passes
/// through ``Redaction`` (known secrets removed by value). No payloads are logged by the relay.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var line = "{"
        for (k, v) in [("time", Self.timestamp(Date())), ("level", event.level.rawValue), ("message", "\(event.message)"),
                       ("logger", label), ("source", event.source)] {
            if k != "time" { line += "," }
            line += Self.quoted(k) + ":" + Self.quoted(Redaction.redact(v))
        }
        var merged = metadata
        for (k, v) in event.metadata ?? [:] { merged[k] = v }
        for (k, v) in merged.sorted(by: { $0.key < $1.key }) {
            line += "," + Self.quoted(k) + ":" + Self.json(v)
        }
        line += "}\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// `2026-12-01T07:44:46.123Z`
    static func timestamp(_ date: Date) -> String {
        let ms = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var t = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T" +
            "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ms % 1000), 3))Z"
    }

    /// A metadata value as typed JSON: integers, finite floating-point numbers and booleans
    /// logged as such (`.stringConvertible(row.id)`) stay numbers and booleans, arrays and
    /// dictionaries stay arrays and objects, everything else is a redacted string.
    static func json(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let s):
            return quoted(Redaction.redact(s))
        case .stringConvertible(let c):
            switch c {
            case let b as Bool: return b ? "true" : "false"
            case let i as any BinaryInteger: return "\(i)"
            case let d as Double where d.isFinite: return "\(d)"
            case let f as Float where f.isFinite: return "\(f)"
            default: return quoted(Redaction.redact("\(c)"))
            }
        case .array(let items):
            return "[" + items.map(json).joined(separator: ",") + "]"
        case .dictionary(let d):
            return "{" + d.sorted(by: { $0.key < $1.key }).map { quoted($0.key) + ":" + json($0.value) }.joined(separator: ",") + "}"
        }
    }

    /// A JSON string literal.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}

/// Wraps a handler so that messages and metadata pass through ``Redaction`` first: secrets are
/// removed from text logs too, whatever logged them.
struct RedactingLogHandler: LogHandler {
    var inner: any LogHandler

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }
    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) {
        var e = event
        e.message = Logger.Message(stringLiteral: Redaction.redact("\(event.message)"))
        e.metadata = event.metadata?.mapValues(Self.redacted)
        inner.log(event: e)
    }

    /// Text redacted; numbers and booleans kept as they are (they carry no secret, and the JSON
    /// format writes them typed).
    static func redacted(_ value: Logger.MetadataValue) -> Logger.MetadataValue {
        switch value {
        case .string(let s): return .string(Redaction.redact(s))
        case .stringConvertible(let c) where c is Bool || c is any BinaryInteger || c is Double || c is Float: return value
        case .stringConvertible(let c): return .string(Redaction.redact("\(c)"))
        case .array(let items): return .array(items.map(redacted))
        case .dictionary(let d): return .dictionary(d.mapValues(redacted))
        }
    }
}
