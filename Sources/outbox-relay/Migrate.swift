import ArgumentParser
import Foundation
import OutboxRelay
import PGClient

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create (idempotently) the outbox table and the relay's tables.")

    @OptionGroup var database: DatabaseOptions
    @Option(name: .customLong("shards"), help: "Number of shards, fixed at creation (default: 256, or the existing table's count)") var shards: Int?

    func run() throws {
        let (url, t) = database.resolve()
        do {
            let conn: PGConnection
            do { conn = try PGConnection(url: url, applicationName: "outbox-relay-migrate") } catch {
                throw RelayError(database: error, context: "cannot connect to the database")
            }
            let n = try Migration.run(on: conn, table: t, shards: shards)
            print("migrated \(t) (\(n) shards); applications insert with: INSERT INTO \(t.sql) (topic, key, value, headers) VALUES ($1, $2, $3, $4)")
        } catch let error as RelayError {
            fail(error.description)
        }
    }
}
