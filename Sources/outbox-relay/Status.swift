import ArgumentParser
import Foundation
import OutboxRelay
import PGClient

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show backlog, oldest row age and replicas (reads the tables; no relay needed).")

    @OptionGroup var database: DatabaseOptions
    @Flag(name: .customLong("json"), help: "Print one JSON object") var json = false

    func run() throws {
        let (url, t) = database.resolve()
        do {
            let report: OutboxStatus
            do {
                let conn = try PGConnection(url: url, applicationName: "outbox-relay-status")
                _ = try SchemaCheck.check(conn, table: t, for: .read)
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
