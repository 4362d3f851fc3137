import Tracing
import Kafka
import PGClient

/// Everything `outbox-relay run` needs. Defaults are stated on each property; the command line
/// layer (flags > environment > default) resolves values into this struct.
public struct RelayConfiguration: Sendable {
    /// libpq URL or conninfo (`OUTBOX_DATABASE_URL`). Required. Never logged.
    public var databaseURL: String
    /// `HOST:PORT[,HOST:PORT…]` (`OUTBOX_BROKERS`). Required.
    public var brokers: String
    /// Outbox table, optionally schema-qualified. Default `outbox`.
    public var table: String = "outbox"
    /// Rows read per claim. Default 1000.
    public var batchSize: Int = 1000
    /// Rows produced but not yet deleted, at most. Default 5000.
    public var maxInFlightRows: Int = 5000
    /// Bytes (key + value + headers) produced but not yet deleted, at most. Default 16 MiB.
    public var maxInFlightBytes: Int = 16 << 20
    /// Claim even without a notification this often, in milliseconds. Default 1000.
    public var pollIntervalMillis: Int = 1000
    /// While rows arrive faster than about one per 1.5 × this, claim every this many
    /// milliseconds instead of waking on each commit's NOTIFY (see ``WakeMode``). Default 5: the
    /// shortest pause between polls, which the latency target lengthens (``ClaimPacer``). Larger
    /// values batch more rows per claim (cheaper per row for the relay and the database, and the
    /// gate stays shut, so inserts send no NOTIFY, down to lower rates) at up to this much more
    /// latency. nil: 5, or the poll interval if that is shorter; a value set
    /// must not exceed the poll interval.
    public var busyPollMillis: Int?
    /// The busy poll in effect (see ``busyPollMillis``).
    public var effectiveBusyPollMillis: Int { busyPollMillis ?? min(5, pollIntervalMillis) }
    /// The p99 a caught-up replica lets its rows' COMMIT → acknowledgement latency reach while
    /// it waits for more rows to claim with them, in milliseconds (see ``ClaimPacer``): after a
    /// notification it lingers, and it lengthens the busy poll, by what of this the path's
    /// measured delay leaves, and the rows' own latencies steer that to the target. 0: claim at
    /// once on every notification and poll every busy poll (the lowest latency, at a claim cycle
    /// per row at a trickle). nil: ``defaultLatencyTargetMillis``, or the poll interval if that
    /// is shorter; a value set must not exceed the poll interval.
    public var latencyTargetMillis: Double?
    /// The default latency target: under the 10 ms p99 that issue 13 allows by what the rows'
    /// measured latency errs (it is an upper bound: from the INSERT, or the snapshot the row
    /// committed after, with the database clock's offset read against the claim's sending).
    /// Each millisecond less costs about a tenth more claims per row at a steady trickle
    /// (docs/BENCHMARKS.md, *The promise where it is made*).
    public static let defaultLatencyTargetMillis = 9.5
    /// The latency target in effect (see ``latencyTargetMillis``).
    public var effectiveLatencyTargetMillis: Double { latencyTargetMillis ?? min(Self.defaultLatencyTargetMillis, Double(pollIntervalMillis)) }
    /// Lease duration in milliseconds. Default 30000.
    public var leaseDurationMillis: Int = 30_000
    /// Heartbeat (lease renewal) interval in milliseconds. Default: lease duration / 6.
    public var heartbeatIntervalMillis: Int?
    /// librdkafka `message.timeout.ms`. Default 10000; must stay below the lease duration.
    public var messageTimeoutMillis: Int = 10_000
    /// PostgreSQL `statement_timeout` for the relay's sessions, in milliseconds. Default 5000.
    public var statementTimeoutMillis: Int = 5_000
    /// How long shutdown waits for outstanding delivery reports, in milliseconds. Default 10000.
    public var shutdownTimeoutMillis: Int = 10_000
    /// First retry delay after a failed delivery, in milliseconds (doubles up to 30 s). Default 100.
    public var retryBackoffMillis: Int = 100
    /// Upper bound of the per-row retry delay, in milliseconds. Default 30000.
    public var retryBackoffMaxMillis: Int = 30_000
    /// Failed attempts after which a row is dead-lettered. Environment failures (broker
    /// unreachable, authorization, unknown topic) never count. Default 10.
    public var maxAttempts: Int = 10
    /// Topic that also receives dead-lettered rows (reason in headers). Default: none.
    public var deadLetterTopic: String?
    /// Re-create the producer when messages are outstanding but no delivery report arrived for
    /// this long, in milliseconds. Default: 2 × message timeout + 5000.
    public var watchdogMillis: Int?
    /// Optional message headers (created_at, relay name, CloudEvents). Default: none.
    public var shape = MessageShape()
    /// Port of the HTTP endpoints (/healthz, /readyz, /metrics); 0 picks a free port. Default 8080.
    public var httpPort: Int = 8080
    /// Address the HTTP endpoints bind to. Default 0.0.0.0 (probes and scrapers come from outside the pod).
    public var httpHost: String = "0.0.0.0"
    /// Name of this replica in the replicas table. Default `HOSTNAME-PID-RANDOM`.
    public var replicaName: String?
    /// How the shards are spread over the replicas (``ShardSpread``). Default `load`: as few
    /// replicas claim as their load needs, the others stand by for a holder's failure or a
    /// rise in load; `even`: every replica claims an even share.
    public var shardSpread: ShardSpread = .load
    /// `otlp`: a span per relayed row, exported over OTLP/HTTP (the OTEL_* environment variables
    /// apply). Default `off`. `outbox-relay run` makes the exporter and sets ``tracer``.
    public var tracing: TracingMode = .off
    /// Which columns messages come from: native (default), or Debezium's outbox layout with its
    /// EventRouter options (``OutboxLayout``).
    public var layout: OutboxLayout = .native
    /// `--layout` as given (resolved into ``layout`` with the Debezium options).
    var layoutName = "native"
    /// The tracer the relay records its spans with; nil records none (the relay then does no
    /// tracing work at all). Any swift-distributed-tracing tracer: the OTLP one, or a test's.
    public var tracer: (any Tracer)?
    /// librdkafka properties passed through by name (they win over the relay's defaults,
    /// except that idempotence cannot be turned off).
    public var kafkaProperties: [(String, String)] = []
    /// Diagnostics for tests: remember where the broker said each row landed (`Relay.deliveryLedger()`),
    /// so a row missing from a topic can be told apart as a broker/reader fault or a relay fault.
    /// Grows with every relayed row; off by default.
    @_spi(Testing) public var recordsDeliveries = false
    /// Tests only: called on the relay's executor right before each row's produce call, with the
    /// row id — a test blocks in it to stage a process freeze in the middle of a batch.
    @_spi(Testing) public var beforeProduce: (@Sendable (Int64) -> Void)?

    public enum TracingMode: String, Sendable, CaseIterable {
        case off, otlp
    }

    public init(databaseURL: String, brokers: String) {
        self.databaseURL = databaseURL
        self.brokers = brokers
    }

    /// Margin between the local view of a lease and the database's.
    static let leaseSafetyMarginMillis = 1_000

    public var effectiveHeartbeatMillis: Int { heartbeatIntervalMillis ?? max(100, leaseDurationMillis / 6) }
    public var effectiveWatchdogMillis: Int { watchdogMillis ?? (2 * messageTimeoutMillis + 5_000) }

    /// Checks every setting; the error names the one at fault.
    public func validate() throws(RelayError) {
        // Secret librdkafka values (SASL passwords, key passwords, OAUTHBEARER secrets) are
        // removed by value from every message from now on.
        for (k, v) in kafkaProperties where KafkaConfiguration.isSecret(k) { Secrets.register(v) }
        if databaseURL.isEmpty { throw RelayError(.configuration, "missing --database-url (OUTBOX_DATABASE_URL)") }
        _ = try Self.parseBrokers(brokers)
        _ = try OutboxTable(table)
        func positive(_ v: Int, _ name: String) throws(RelayError) {
            if v <= 0 { throw RelayError(.configuration, "invalid \(name) \(v): must be positive") }
        }
        try positive(batchSize, "--batch-size")
        try positive(maxInFlightRows, "--max-in-flight-rows")
        try positive(maxInFlightBytes, "--max-in-flight-bytes")
        try positive(pollIntervalMillis, "--poll-interval-ms")
        if let b = busyPollMillis {
            try positive(b, "--busy-poll-ms")
            if b > pollIntervalMillis {
                throw RelayError(.configuration, "invalid --busy-poll-ms \(b): must not exceed --poll-interval-ms \(pollIntervalMillis)")
            }
        }
        if let t = latencyTargetMillis, !(t >= 0 && t <= Double(pollIntervalMillis)) {
            throw RelayError(.configuration, "invalid --latency-target-ms \(t): must be 0 (claim at once) to --poll-interval-ms \(pollIntervalMillis)")
        }
        try positive(leaseDurationMillis, "--lease-duration-ms")
        try positive(messageTimeoutMillis, "--message-timeout-ms")
        try positive(statementTimeoutMillis, "--statement-timeout-ms")
        try positive(retryBackoffMillis, "--retry-backoff-ms")
        try positive(retryBackoffMaxMillis, "--retry-backoff-max-ms")
        try positive(maxAttempts, "--max-attempts")
        if let w = watchdogMillis { try positive(w, "--watchdog-ms") }
        if !(0...65535).contains(httpPort) { throw RelayError(.configuration, "invalid --http-port \(httpPort): must be 0-65535") }
        if let t = deadLetterTopic, t.isEmpty { throw RelayError(.configuration, "invalid --dead-letter-topic: empty") }
        if shutdownTimeoutMillis < 0 { throw RelayError(.configuration, "invalid --shutdown-timeout-ms \(shutdownTimeoutMillis): must not be negative") }
        if let h = heartbeatIntervalMillis {
            try positive(h, "--heartbeat-interval-ms")
            if h >= leaseDurationMillis {
                throw RelayError(.configuration, "invalid --heartbeat-interval-ms \(h): must be below --lease-duration-ms \(leaseDurationMillis)")
            }
        }
        if batchSize > maxInFlightRows {
            throw RelayError(.configuration, "invalid --batch-size \(batchSize): must not exceed --max-in-flight-rows \(maxInFlightRows)")
        }
        let kafka = kafkaConfiguration()
        if let idem = kafka["enable.idempotence"], idem != "true" {
            throw RelayError(.configuration, "librdkafka property enable.idempotence=\(idem) is not allowed: per-key order and duplicate-free retries depend on it")
        }
        if let fails = kafka["socket.max.fails"], fails != "1" {
            throw RelayError(.configuration, "librdkafka property socket.max.fails=\(fails) is not allowed: a request that timed out must close its connection (with a reset, discarding what the kernel still holds), or its bytes can reach the broker after the row was re-sent or its lease moved to another replica")
        }
        if let id = kafka["transactional.id"] {
            throw RelayError(.configuration, "librdkafka property transactional.id=\(id) is not allowed: the relay never uses Kafka transactions (each row is acknowledged and deleted on its own), and a transactional producer refuses plain produce calls")
        }
        // Lease must outlive every message's final report plus a reconnect and a statement.
        let timeout = effectiveMessageTimeoutMillis
        let backoff = effectiveReconnectBackoffMaxMillis
        let needed = timeout + backoff + statementTimeoutMillis + Self.leaseSafetyMarginMillis
        if leaseDurationMillis <= needed {
            throw RelayError(.configuration,
                "invalid --lease-duration-ms \(leaseDurationMillis): must exceed message.timeout.ms (\(timeout)) + " +
                "reconnect.backoff.max.ms (\(backoff)) + --statement-timeout-ms (\(statementTimeoutMillis)) + " +
                "a \(Self.leaseSafetyMarginMillis) ms margin = \(needed), so in-flight messages settle before another replica may take a shard")
        }
        // Rows are produced only while the lease outlives their final report (see LeaseTable):
        // renewals must come well within that window, or the replica keeps pausing.
        let window = leaseDurationMillis - Self.leaseSafetyMarginMillis - timeout - backoff
        if effectiveHeartbeatMillis >= window {
            throw RelayError(.configuration,
                "invalid --heartbeat-interval-ms \(effectiveHeartbeatMillis): a lease is produced to only for lease duration − margin − message timeout − reconnect back-off = \(window) ms after each renewal, and a renewal must come within that window")
        }
        do { try kafka.validate() } catch { throw RelayError(kafka: error, context: "invalid Kafka configuration") }
    }

    /// The message timeout librdkafka will really use: `message.timeout.ms` or its alias
    /// `delivery.timeout.ms` when passed through (the later one wins, as in librdkafka), else
    /// `--message-timeout-ms`.
    public var effectiveMessageTimeoutMillis: Int {
        var value = messageTimeoutMillis
        for (k, v) in kafkaProperties where k == "message.timeout.ms" || k == "delivery.timeout.ms" {
            if let ms = Int(v) { value = ms }
        }
        return value
    }

    /// librdkafka `reconnect.backoff.max.ms` in force: a message's final (timed-out) report can
    /// come up to this long after its timeout when every broker is down.
    public var effectiveReconnectBackoffMaxMillis: Int {
        var value = 1_000
        for (k, v) in kafkaProperties where k == "reconnect.backoff.max.ms" {
            if let ms = Int(v) { value = ms }
        }
        return value
    }

    /// Seconds between producing a message and the latest moment its final delivery report can
    /// come: message timeout plus reconnect back-off. A row is produced to a shard only while the
    /// lease outlives this by the safety margin.
    public var deliveryBoundSeconds: Double {
        Double(effectiveMessageTimeoutMillis + effectiveReconnectBackoffMaxMillis) / 1000
    }

    /// `HOST:PORT[,HOST:PORT…]`; IPv6 hosts in brackets.
    public static func parseBrokers(_ text: String) throws(RelayError) -> [String] {
        let entries = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingWhitespace() }
        if text.trimmingWhitespace().isEmpty { throw RelayError(.configuration, "missing --brokers (OUTBOX_BROKERS): expected HOST:PORT[,HOST:PORT...]") }
        for e in entries {
            guard let colon = e.lastIndex(of: ":") else {
                throw RelayError(.configuration, "invalid --brokers \"\(text)\": entry \"\(e)\" is not HOST:PORT")
            }
            let host = e[..<colon]
            let port = e[e.index(after: colon)...]
            let hostOK = !host.isEmpty && !host.contains("/") && !host.contains(" ")
                && (host.first == "[" ? host.last == "]" : !host.contains(":"))
            guard hostOK, let p = Int(port), (1...65535).contains(p) else {
                throw RelayError(.configuration, "invalid --brokers \"\(text)\": entry \"\(e)\" is not HOST:PORT (port 1-65535)")
            }
        }
        return entries
    }

    /// The producer configuration: the relay's settings, then pass-through properties.
    public func kafkaConfiguration(clientId: String = "outbox-relay") -> KafkaConfiguration {
        var c = KafkaConfiguration([
            ("bootstrap.servers", brokers),
            ("client.id", clientId),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("partitioner", "murmur2_random"),
            ("message.timeout.ms", String(messageTimeoutMillis)),
            ("reconnect.backoff.max.ms", "1000"),
            // librdkafka paces "connect to any broker" at half the initial reconnect back-off
            // (100 ms by default). At start-up it drops the bootstrap entry once metadata names
            // the broker, and the connection for the producer id then waited out that pause:
            // PID acquired 97 → 71 ms after process start, before the first claim is ready.
            // Back-off still doubles per failed attempt up to the maximum above.
            ("reconnect.backoff.ms", "10"),
            // Latency first: measured p50 commit→ack 1 ms at linger 0 against 7 ms at librdkafka's
            // default 5, and no loss of drain throughput (batches still form behind in-flight requests).
            ("linger.ms", "0"),
            // A claim's rows go out as one ProduceRequest per partition, written back to back on
            // the broker's connection. With Nagle's algorithm on, every request after the first
            // waits in the kernel until the broker acknowledges the first at the TCP level, which
            // over a network is the first request's whole produce latency (the broker's delayed
            // ACK rides on its response). librdkafka turned it off by default in 2.10; the relay
            // runs on 2.2 and later, so it says so itself.
            ("socket.nagle.disable", "true"),
            // A batch the broker refuses for good (a bad row in it, or a fenced producer) must not
            // let the partition's later in-flight batches land first: with gap-less on, librdkafka
            // raises a fatal error instead of renumbering them, the relay re-creates the producer
            // and re-sends in id order, and the refused batch's rows are then probed one by one
            // so only the culprit is dead-lettered.
            ("enable.gapless.guarantee", "true"),
            ("queue.buffering.max.messages", String(max(100_000, maxInFlightRows * 2))),
            ("queue.buffering.max.kbytes", String(max(1 << 20, maxInFlightBytes / 1024 * 2))),
        ])
        for (k, v) in kafkaProperties { c.set(k, v) }
        return c
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

extension String {
    func trimmingWhitespace() -> String { Substring(self).trimmingWhitespace() }
}
