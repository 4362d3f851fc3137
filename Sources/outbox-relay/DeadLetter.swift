import ArgumentParser
import Foundation
import OutboxRelay
import PGClient

struct DeadLetter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead-letter",
        abstract: "List, requeue or purge dead-lettered rows.",
        subcommands: [List.self, Requeue.self, Purge.self])

    struct Target: ParsableArguments {
        @OptionGroup var database: DatabaseOptions
        @Option(name: .customLong("topic"), help: "Only dead letters of this topic") var topic: String?

        func open(for purpose: SchemaCheck.Purpose) throws -> (PGConnection, DeadLetterQueries) {
            let (url, t) = database.resolve()
            if purpose == .requeueDeadLetters, t.layout != .native {
                // A dead letter keeps the Kafka message; the application's Debezium columns
                // (aggregatetype, type, ...) cannot be rebuilt from it.
                throw RelayError(.configuration, "dead-letter requeue works for the native layout only: table \(t) has the \(t.layout.name) layout, whose rows cannot be rebuilt from the messages kept in \(t.deadLetterSQL); insert the events again from the application, then `dead-letter purge` them")
            }
            do {
                let conn = try PGConnection(url: url, applicationName: "outbox-relay-dead-letter")
                _ = try SchemaCheck.check(conn, table: t, for: purpose)
                return (conn, DeadLetterQueries(table: t))
            } catch let error as PGError {
                throw RelayError(database: error, context: "cannot connect to the database")
            }
        }
    }

    static func run(_ body: () throws -> Void) {
        do { try body() } catch let error as RelayError { fail(error.description) } catch { fail("\(error)") }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters (id order).")
        @OptionGroup var target: Target
        @Argument(help: "Only these row ids") var ids: [Int64] = []
        @Option(name: .customLong("limit"), help: "At most this many (default: 100)") var limit = 100
        @Flag(name: .customLong("json"), help: "One JSON object per line") var json = false

        func run() {
            DeadLetter.run {
                let (conn, q) = try target.open(for: .read)
                let entries = try q.list(conn, filter: .init(topic: target.topic, ids: ids), limit: limit)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                for e in entries {
                    if json {
                        print(String(decoding: try encoder.encode(e), as: UTF8.self))
                    } else {
                        print("id=\(e.id) topic=\(e.topic) key=\(e.key.map { e.keyEncoding == "hex" ? "hex:\($0)" : $0 } ?? "<null>") attempts=\(e.attempts) at=\(e.deadLetteredAt) code=\(e.errorCode ?? "-") reason=\(e.reason)")
                    }
                }
                if !json { print("\(entries.count) dead letter(s)") }
            }
        }
    }

    /// Requeue and purge take the same arguments: ids, or --all (of --topic).
    struct Selection: ParsableArguments {
        @OptionGroup var target: Target
        @Argument(help: "Row ids") var ids: [Int64] = []
        @Flag(name: .customLong("all"), help: "Every dead letter (of --topic, if given)") var all = false

        func run(_ verb: String, purpose: SchemaCheck.Purpose, _ action: (DeadLetterQueries, PGConnection, DeadLetterQueries.Filter) throws -> Int) {
            DeadLetter.run {
                guard all || !ids.isEmpty else { throw RelayError(.configuration, "name the ids to \(verb), or pass --all") }
                let (conn, q) = try target.open(for: purpose)
                let n = try action(q, conn, .init(topic: target.topic, ids: all ? [] : ids))
                print("\(verb)d \(n) row(s)")
            }
        }
    }

    struct Requeue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put dead letters back into the outbox (as new rows, in id order; the old id goes in the outbox-requeued-from header).")
        @OptionGroup var selection: Selection
        func run() { selection.run("requeue", purpose: .requeueDeadLetters) { q, conn, filter in try q.requeue(conn, filter: filter) } }
    }

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead letters for good.")
        @OptionGroup var selection: Selection
        func run() { selection.run("purge", purpose: .purgeDeadLetters) { q, conn, filter in try q.purge(conn, filter: filter) } }
    }
}
