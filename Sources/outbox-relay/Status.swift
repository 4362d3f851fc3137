import ArgumentParser
import Foundation
import OutboxRelay
import PGClient

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show backlog, oldest row age and replicas (reads the tables; no relay needed).")

    @Option(name: .customLong("database-url"), help: "PostgreSQL URL [env: OUTBOX_DATABASE_URL]") var databaseURL: String?
    @Option(name: .customLong("table"), help: "Outbox table [env: OUTBOX_TABLE] (default: outbox)") var table: String?
    @Flag(name: .customLong("json"), help: "Print one JSON object") var json = false

    func run() throws {
        let url = resolveDatabaseURL(databaseURL)
        do {
            let t = try OutboxTable(table ?? ProcessInfo.processInfo.environment["OUTBOX_TABLE"] ?? "outbox")
            let report: OutboxStatus
            do {
                let conn = try PGConnection(url: url, applicationName: "outbox-relay-status")
                _ = try SchemaCheck.check(conn, table: t)
                report = try OutboxStatus.read(conn, table: t)
            } catch let error as PGError {
                throw RelayError(database: error, context: "status")
            }
            print(json ? report.json() : report.text())
        } catch let error as RelayError {
            fail(error.description)
        } catch {
            fail("\(error)")
        }
    }
}
