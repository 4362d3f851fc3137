import Foundation
import Logging

/// One JSON object per line on stderr: time, level, message, source and the dotted metadata
/// keys as fields. No payloads are logged at info level by the relay.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: String] = [:]
        for (k, v) in metadata { object[k] = "\(v)" }
        for (k, v) in event.metadata ?? [:] { object[k] = "\(v)" }
        object["time"] = ISO8601DateFormatter().string(from: Date())
        object["level"] = event.level.rawValue
        object["message"] = "\(event.message)"
        object["logger"] = label
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var line = try? encoder.encode(object) else { return }
        line.append(0x0a)
        FileHandle.standardError.write(line)
    }
}
