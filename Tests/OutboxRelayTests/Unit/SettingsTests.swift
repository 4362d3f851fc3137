import Foundation
import Kafka
import OutboxRelay
import Testing

@Suite struct SettingsTests {
    @Test func flagsWinOverEnvironmentWhichWinsOverDefaults() throws {
        let c = try Settings.resolve(
            flags: ["batch-size": "10", "database-url": "postgresql://flag"],
            environment: ["OUTBOX_BATCH_SIZE": "20", "OUTBOX_POLL_INTERVAL_MS": "300",
                          "OUTBOX_DATABASE_URL": "postgresql://env", "OUTBOX_BROKERS": "a:1"])
        #expect(c.batchSize == 10)
        #expect(c.pollIntervalMillis == 300)
        #expect(c.databaseURL == "postgresql://flag")
        #expect(c.brokers == "a:1")
        #expect(c.leaseDurationMillis == 30_000)
    }

    @Test func everySettingHasItsEnvironmentVariable() {
        for s in Settings.all {
            #expect(s.environmentVariable == "OUTBOX_" + s.flag.uppercased().replacingOccurrences(of: "-", with: "_"))
            #expect(s.helpText.contains(s.environmentVariable))
            #expect(s.helpText.contains("default:"))
        }
    }

    @Test func secretsCanComeFromFiles() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID())").path
        try "postgresql://u:pw@h/db\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let c = try Settings.resolve(flags: [:], environment: ["OUTBOX_DATABASE_URL_FILE": path, "OUTBOX_KAFKA_SASL_PASSWORD_FILE": path])
        #expect(c.databaseURL == "postgresql://u:pw@h/db")
        #expect(c.kafkaProperties.first { $0.0 == "sasl.password" }?.1 == "postgresql://u:pw@h/db")
    }

    @Test func kafkaPropertiesPassThrough() throws {
        let c = try Settings.resolve(flags: [:], kafkaProperties: ["linger.ms=20", "compression.type=zstd"],
                                     environment: ["OUTBOX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "OUTBOX_KAFKA_LINGER_MS": "7"])
        let k = c.kafkaConfiguration()
        #expect(k["linger.ms"] == "20", "flag wins over environment")
        #expect(k["security.protocol"] == "SASL_SSL")
        #expect(k["compression.type"] == "zstd")
        #expect(k["enable.idempotence"] == "true")
        #expect(k["partitioner"] == "murmur2_random")
    }

    @Test(arguments: ["localhost", "host:", ":9092", "host:99999", "a:1,,b:2", "host:port", " "])
    func invalidBrokersAreRefusedNamingTheSetting(_ brokers: String) {
        #expect {
            try RelayConfiguration.parseBrokers(brokers)
        } throws: { error in
            "\(error)".contains("--brokers")
        }
    }

    @Test func validBrokersParse() throws {
        #expect(try RelayConfiguration.parseBrokers("a:1, b.example:9092,[::1]:9093") == ["a:1", "b.example:9092", "[::1]:9093"])
    }

    @Test func leaseTooShortForTheTimeoutsIsRefusedNamingTheSettings() {
        var c = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        c.leaseDurationMillis = 12_000  // 10000 + 1000 + 5000 + 1000 needed
        #expect {
            try c.validate()
        } throws: { error in
            let text = "\(error)"
            return text.contains("--lease-duration-ms") && text.contains("message.timeout.ms") && text.contains("--statement-timeout-ms")
        }
    }

    @Test func theDeliveryTimeoutAliasCountsAsTheMessageTimeout() {
        var c = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        c.kafkaProperties = [("delivery.timeout.ms", "120000")]
        #expect(c.effectiveMessageTimeoutMillis == 120_000)
        #expect { try c.validate() } throws: { error in
            "\(error)".contains("--lease-duration-ms") && "\(error)".contains("(120000)")
        }
        c.leaseDurationMillis = 200_000
        #expect(throws: Never.self) { try c.validate() }
        #expect(c.deliveryBoundSeconds == 121)
    }

    /// `OUTBOX_KAFKA_…_FILE` reads a value from a file — except where the whole name is a real
    /// librdkafka property ending in `.file`.
    @Test func aLibrdkafkaPropertyEndingInFileIsNotAFileIndirection() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sasl-\(UUID().uuidString)").path
        try "from-file\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let c = try Settings.resolve(flags: [:], environment: [
            "OUTBOX_KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE": "/etc/keys/assertion.pem",
            "OUTBOX_KAFKA_SASL_PASSWORD_FILE": path,
        ])
        let props = Dictionary(c.kafkaProperties, uniquingKeysWith: { $1 })
        #expect(props["sasl.oauthbearer.assertion.private.key.file"] == "/etc/keys/assertion.pem")
        #expect(props["sasl.oauthbearer.assertion.private.key"] == nil, "not read as a file")
        #expect(props["sasl.password"] == "from-file")
    }

    @Test func aTransactionalIdIsRefusedWithTheReason() {
        var c = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        c.kafkaProperties = [("transactional.id", "relay-1")]
        #expect { try c.validate() } throws: { "\($0)".contains("transactional.id") && "\($0)".contains("never uses Kafka transactions") }
    }

    @Test func aHeartbeatThatCannotRenewWithinTheProduceWindowIsRefused() {
        var c = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        c.leaseDurationMillis = 20_000       // produce window: 20000 - 1000 - 10000 - 1000 = 8000
        c.heartbeatIntervalMillis = 9_000
        #expect { try c.validate() } throws: { "\($0)".contains("--heartbeat-interval-ms 9000") }
        c.heartbeatIntervalMillis = 3_000
        #expect(throws: Never.self) { try c.validate() }
    }

    @Test func theBusyPollIsFiveMillisecondsByDefaultAndAtMostThePollInterval() throws {
        let d = try Settings.resolve(flags: [:], environment: ["OUTBOX_DATABASE_URL": "postgresql://x", "OUTBOX_BROKERS": "a:1"])
        #expect(d.busyPollMillis == nil && d.effectiveBusyPollMillis == 5)
        let e = try Settings.resolve(flags: [:], environment: ["OUTBOX_DATABASE_URL": "postgresql://x", "OUTBOX_BROKERS": "a:1",
                                                               "OUTBOX_BUSY_POLL_MS": "20"])
        #expect(e.effectiveBusyPollMillis == 20)
        // A poll interval under 5 ms, as before the setting existed: the default follows it.
        var short = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        short.pollIntervalMillis = 2
        #expect(throws: Never.self) { try short.validate() }
        #expect(short.effectiveBusyPollMillis == 2)
        var c = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        c.busyPollMillis = 0
        #expect { try c.validate() } throws: { "\($0)".contains("--busy-poll-ms 0") }
        c.busyPollMillis = 300
        c.pollIntervalMillis = 200
        #expect { try c.validate() } throws: { "\($0)".contains("--busy-poll-ms 300") && "\($0)".contains("--poll-interval-ms 200") }
        c.busyPollMillis = 200
        #expect(throws: Never.self) { try c.validate() }
    }

    @Test func theLatencyTargetTakesDecimalsAndIsAtMostThePollInterval() throws {
        let env = ["OUTBOX_DATABASE_URL": "postgresql://x", "OUTBOX_BROKERS": "a:1"]
        let d = try Settings.resolve(flags: [:], environment: env)
        #expect(d.latencyTargetMillis == nil && d.effectiveLatencyTargetMillis == 9.5)
        let e = try Settings.resolve(flags: ["latency-target-ms": "7.25"], environment: env)
        #expect(e.effectiveLatencyTargetMillis == 7.25)
        #expect { try Settings.resolve(flags: ["latency-target-ms": "9ms"], environment: env) } throws: {
            "\($0)".contains("--latency-target-ms \"9ms\"") && "\($0)".contains("milliseconds")
        }
        #expect { try Settings.resolve(flags: ["latency-target-ms": "nan"], environment: env) } throws: {
            "\($0)".contains("--latency-target-ms \"nan\"")
        }
        var c = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        c.latencyTargetMillis = -0.5
        #expect { try c.validate() } throws: { "\($0)".contains("--latency-target-ms -0.5") }
        c.latencyTargetMillis = 200.5
        c.pollIntervalMillis = 200
        #expect { try c.validate() } throws: { "\($0)".contains("--latency-target-ms 200.5") && "\($0)".contains("--poll-interval-ms 200") }
        // A poll interval under the default: the default follows it.
        var short = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        short.pollIntervalMillis = 4
        #expect(short.effectiveLatencyTargetMillis == 4)
    }

    @Test func negativeBatchSizeAndUnknownKafkaPropertyAreRefused() {
        var c = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        c.batchSize = -5
        #expect { try c.validate() } throws: { "\($0)".contains("--batch-size") }
        var k = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        k.kafkaProperties = [("no.such.property", "1")]
        #expect { try k.validate() } throws: { "\($0)".contains("no.such.property") && "\($0)".contains("No such configuration property") }
        var i = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        i.kafkaProperties = [("enable.idempotence", "false")]
        #expect { try i.validate() } throws: { "\($0)".contains("enable.idempotence") }
        var f = RelayConfiguration(databaseURL: "postgresql://x", brokers: "a:1")
        f.kafkaProperties = [("socket.max.fails", "3")]
        #expect { try f.validate() } throws: { "\($0)".contains("socket.max.fails=3") }
        f.kafkaProperties = [("socket.max.fails", "1")]
        #expect(throws: Never.self) { try f.validate() }
    }

    @Test func tracingIsOffByDefaultAndOnlyOffOrOTLP() throws {
        #expect(try Settings.resolve(flags: [:], environment: [:]).tracing == .off)
        #expect(try Settings.resolve(flags: [:], environment: ["OUTBOX_TRACING": "OTLP"]).tracing == .otlp)
        #expect(throws: RelayError.self) { try Settings.resolve(flags: ["tracing": "jaeger"], environment: [:]) }
        do {
            _ = try Settings.resolve(flags: ["tracing": "jaeger"], environment: [:])
        } catch {
            #expect(error.description.contains("--tracing") && error.description.contains("jaeger"), "\(error)")
        }
    }

    @Test func tableNamesAreQuotedAndValidated() throws {
        let t = try OutboxTable("app.Outbox\"x")
        #expect(t.sql == "\"app\".\"Outbox\"\"x\"")
        #expect(try OutboxTable("outbox").sql == "\"public\".\"outbox\"")
        #expect(throws: RelayError.self) { try OutboxTable("a.b.c") }
        #expect(throws: RelayError.self) { try OutboxTable(".x") }
    }
}

@Suite struct DocumentationTests {
    @Test func readmeConfigurationTableMatchesTheSettings() throws {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        #expect(text.contains(Settings.markdownTable()), "regenerate the README's table from Settings.markdownTable()")
    }
}

@Suite struct LibrdkafkaVersionTests {
    @Test func versionsBefore2_2AreRefusedWithTheReason() {
        #expect {
            try Librdkafka.checkVersion(0x0200_02ff, versionString: "2.0.2")
        } throws: { error in
            "\(error)".contains("2.0.2") && "\(error)".contains("KIP-482")
        }
        #expect(throws: Never.self) { try Librdkafka.checkVersion(0x020e_02ff, versionString: "2.14.2") }
        #expect(Librdkafka.version >= Librdkafka.minimumVersion, "the linked librdkafka is \(Librdkafka.versionString)")
    }
}

@Suite struct ConfigurationFileTests {
    @Test func aSettingGivenThreeWaysResolvesFlagOverEnvironmentOverFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("relay-\(UUID()).conf").path
        try """
            # relay settings
            batch-size = 111
            poll-interval-ms = 222
            lease-duration-ms = 40000
            kafka.linger.ms = 9
            kafka.compression.type = "lz4"
            """.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try Settings.readFile(path)
        let c = try Settings.resolve(flags: ["batch-size": "333"], kafkaProperties: ["compression.type=zstd"],
                                     environment: ["OUTBOX_BATCH_SIZE": "444", "OUTBOX_POLL_INTERVAL_MS": "555"], file: file)
        #expect(c.batchSize == 333, "flag wins")
        #expect(c.pollIntervalMillis == 555, "environment wins over the file")
        #expect(c.leaseDurationMillis == 40_000, "file wins over the default")
        #expect(c.heartbeatIntervalMillis == nil)
        let k = c.kafkaConfiguration()
        #expect(k["linger.ms"] == "9")
        #expect(k["compression.type"] == "zstd", "flag wins over the file")
        #expect(k["socket.nagle.disable"] == "true", "a claim's requests after the first must not wait for a TCP ACK")
        let nagle = try Settings.resolve(flags: [:], kafkaProperties: ["socket.nagle.disable=false"], environment: [:], file: [:])
        #expect(nagle.kafkaConfiguration()["socket.nagle.disable"] == "false", "a pass-through property still wins")
    }

    @Test func unknownFileSettingsAreRefusedByName() throws {
        #expect { try Settings.resolve(flags: [:], environment: [:], file: ["batch-sise": "1"]) } throws: { "\($0)".contains("batch-sise") }
    }
}
