import ArgumentParser
import Foundation
import Kafka
import Logging
import OutboxRelay

@main
struct OutboxRelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-relay",
        abstract: "Forwards rows of a PostgreSQL transactional outbox table to Kafka.",
        discussion: """
            Every option of `run` also reads an environment variable: --some-name <=> OUTBOX_SOME_NAME \
            (OUTBOX_SOME_NAME_FILE reads it from a file). Flags win over the environment.
            """,
        version: "outbox-relay \(RelayVersion.current) (librdkafka \(Librdkafka.versionString))",
        subcommands: [Migrate.self, Run.self, Status.self, Validate.self, DeadLetter.self, Consume.self, ConfigTable.self])
}

/// Prints a clear one-line error (no stack, no secrets) and exits non-zero.
func fail(_ message: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("outbox-relay: error: \(message)\n".utf8))
    exit(code)
}

func bootstrapLogging(level: String?, format: String? = nil, file: [String: String] = [:]) -> Logger {
    let env = ProcessInfo.processInfo.environment
    let levelText = level ?? env["OUTBOX_LOG_LEVEL"] ?? file["log-level"] ?? "info"
    guard let parsed = Logger.Level(rawValue: levelText.lowercased()) else {
        fail("invalid --log-level \"\(levelText)\": use trace, debug, info, notice, warning, error or critical")
    }
    let formatText = (format ?? env["OUTBOX_LOG_FORMAT"] ?? file["log-format"] ?? "text").lowercased()
    guard formatText == "text" || formatText == "json" else {
        fail("invalid --log-format \"\(formatText)\": use text or json")
    }
    LoggingSystem.bootstrap { label in
        if formatText == "json" {
            var handler = JSONLogHandler(label: label)
            handler.logLevel = parsed
            return handler
        }
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = parsed
        return RedactingLogHandler(inner: handler)
    }
    return Logger(label: "outbox-relay")
}
