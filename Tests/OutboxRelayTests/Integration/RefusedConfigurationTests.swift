import Foundation
import OutboxRelay
import PGClient
import Testing

@Suite struct RefusedConfigurationTests {
    func startError(_ config: RelayConfiguration) async -> String? {
        do {
            let relay = try Relay(configuration: config, logger: TestEnvironment.logger)
            try await relay.start()
            relay.shutdown()
            try await relay.run()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func unreachableDatabase() async throws {
        let table = try OutboxTable("outbox")
        var c = TestEnvironment.configuration(table: table)
        c.databaseURL = "postgresql://relay:very-secret-pw@127.0.0.1:1/app?connect_timeout=2"
        let message = try #require(await startError(c))
        #expect(message.contains("cannot connect to the database"), "\(message)")
        #expect(!message.contains("very-secret-pw"))
    }

    @Test func missingTableSuggestsMigrate() async throws {
        let c = TestEnvironment.configuration(table: try OutboxTable("not_migrated_\(UUID().uuidString.prefix(6).lowercased())"))
        let message = try #require(await startError(c))
        #expect(message.contains("does not exist"), "\(message)")
        #expect(message.contains("outbox-relay migrate"), "\(message)")
    }

    @Test func wrongTableNamesTheColumn() async throws {
        let table = try TestEnvironment.migratedTable()
        try TestEnvironment.connect().executeScript("ALTER TABLE \(table.sql) DROP COLUMN headers")
        let message = try #require(await startError(TestEnvironment.configuration(table: table)))
        #expect(message.contains("\"headers\""), "\(message)")
        #expect(message.contains("migrate"))
    }

    @Test func invalidBrokersString() async throws {
        var c = TestEnvironment.configuration(table: try TestEnvironment.migratedTable())
        c.brokers = "kafka-without-port"
        let message = try #require(await startError(c))
        #expect(message.contains("--brokers") && message.contains("kafka-without-port"), "\(message)")
    }

    @Test func unknownLibrdkafkaProperty() async throws {
        var c = TestEnvironment.configuration(table: try TestEnvironment.migratedTable())
        c.kafkaProperties = [("linger.mss", "5")]
        let message = try #require(await startError(c))
        #expect(message.contains("linger.mss") && message.contains("No such configuration property"), "\(message)")
    }

    /// The executable prints the same messages and exits non-zero.
    @Test func theCommandLineRefusesBadConfigurationWithAClearMessage() throws {
        let binary = ProcessInfo.processInfo.environment["OUTBOX_RELAY_BINARY"] ?? ".build/debug/outbox-relay"
        #expect(FileManager.default.isExecutableFile(atPath: binary), "build the executable first: \(binary)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["run", "--database-url", TestEnvironment.databaseURL, "--brokers", "nonsense"]
        p.environment = [:]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus != 0)
        #expect(text.contains("invalid --brokers \"nonsense\""), "\(text)")
    }
}
