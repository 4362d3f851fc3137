import ArgumentParser
import Foundation
import OutboxRelay
import PGClient

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the outbox table and the relay's tables against this version; print each difference with the statement that fixes it.")

    @OptionGroup var database: DatabaseOptions
    @Flag(name: .customLong("json"), help: "Print a JSON array of {problem, fix}") var json = false

    func run() throws {
        let (url, t) = database.resolve()
        let diffs: [SchemaValidation.Difference]
        do {
            diffs = try Self.differences(url: url, table: t)
        } catch {
            fail(error.description)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(diffs), as: UTF8.self))
        } else if diffs.isEmpty {
            print("\(t): matches what this version expects")
        } else {
            for d in diffs { print(d.description) }
            print("\(diffs.count) difference(s)")
        }
        if !diffs.isEmpty { throw ExitCode(1) }
    }

    static func differences(url: String, table: OutboxTable) throws(RelayError) -> [SchemaValidation.Difference] {
        do {
            let conn = try PGConnection(url: url, applicationName: "outbox-relay-validate")
            return try SchemaValidation.differences(conn, table: table)
        } catch {
            throw RelayError(database: error, context: "validate")
        }
    }
}
