import Metrics
import Synchronization

/// The relay's metrics, created once per relay through swift-metrics (the process chooses the
/// backend: Prometheus in `outbox-relay run`). Every name has the `outbox_relay_` prefix and
/// follows Prometheus conventions (`_total` counters, `_seconds` durations).
public final class RelayMetrics: Sendable {
    static let prefix = "outbox_relay_"
    let table: String

    let rowsDeleted: Counter
    let lostLeaseRows: Counter
    let producerRecreations: Counter
    let batchRows: Recorder
    let inFlightRows: Gauge
    let inFlightBytes: Gauge
    let shardsHeld: Gauge
    let liveReplicas: Gauge
    let claimingReplicas: Gauge
    let busyShare: Gauge
    let backlogRows: Gauge
    let oldestRowAge: Gauge
    let claimLinger: Gauge
    let commitToAck: Timer
    let claimDuration: Timer
    let deleteDuration: Timer
    let leaseDuration: Timer
    let ready: Gauge
    let deadLetters: Gauge
    /// `rows_produced_total` per topic, made once per topic: making a counter goes through the
    /// backend's registry (a lock and a lookup by name and labels), and it ran per report batch.
    private let producedCounters = Mutex<[String: Counter]>([:])

    init(table: String) {
        self.table = table
        let t = [("table", table)]
        rowsDeleted = Counter(label: Self.prefix + "rows_deleted_total", dimensions: t)
        lostLeaseRows = Counter(label: Self.prefix + "lost_lease_rows_total", dimensions: t)
        producerRecreations = Counter(label: Self.prefix + "producer_recreations_total", dimensions: t)
        batchRows = Recorder(label: Self.prefix + "batch_rows", dimensions: t, aggregate: true)
        inFlightRows = Gauge(label: Self.prefix + "in_flight_rows", dimensions: t)
        inFlightBytes = Gauge(label: Self.prefix + "in_flight_bytes", dimensions: t)
        shardsHeld = Gauge(label: Self.prefix + "shards_held", dimensions: t)
        liveReplicas = Gauge(label: Self.prefix + "live_replicas", dimensions: t)
        claimingReplicas = Gauge(label: Self.prefix + "claiming_replicas", dimensions: t)
        busyShare = Gauge(label: Self.prefix + "claim_busy_ratio", dimensions: t)
        backlogRows = Gauge(label: Self.prefix + "backlog_rows", dimensions: t)
        oldestRowAge = Gauge(label: Self.prefix + "oldest_row_age_seconds", dimensions: t)
        claimLinger = Gauge(label: Self.prefix + "claim_linger_seconds", dimensions: t)
        commitToAck = Timer(label: Self.prefix + "commit_to_ack_seconds", dimensions: t, preferredDisplayUnit: .seconds)
        claimDuration = Timer(label: Self.prefix + "db_statement_duration_seconds", dimensions: t + [("statement", "claim")], preferredDisplayUnit: .seconds)
        deleteDuration = Timer(label: Self.prefix + "db_statement_duration_seconds", dimensions: t + [("statement", "delete")], preferredDisplayUnit: .seconds)
        leaseDuration = Timer(label: Self.prefix + "db_statement_duration_seconds", dimensions: t + [("statement", "lease")], preferredDisplayUnit: .seconds)
        ready = Gauge(label: Self.prefix + "ready", dimensions: t)
        deadLetters = Gauge(label: Self.prefix + "dead_letters", dimensions: t)
    }

    /// Histogram buckets that resolve the relay's real latencies (p50 commit → ack is about a
    /// millisecond; the default buckets started at 5 ms), for backends that take them.
    public static let commitToAckBuckets: [Duration] = [
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(3), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]
    public static let statementBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(5),
    ]
    public static let commitToAckLabel = prefix + "commit_to_ack_seconds"
    /// Rendered by ``Relay/ackLatencyMetricText()`` from librdkafka's own acknowledgement times,
    /// not through swift-metrics (see ``Relay/ackLatency``).
    public static let produceToAckLabel = prefix + "produce_to_ack_seconds"
    public static let statementLabel = prefix + "db_statement_duration_seconds"

    /// `outbox_relay_build_info{version, librdkafka} 1`.
    public static func recordBuildInfo(version: String, librdkafka: String) {
        Gauge(label: prefix + "build_info", dimensions: [("version", version), ("librdkafka", librdkafka)]).record(1)
    }

    func produced(topic: String, count: Int) {
        let table = self.table
        let counter = producedCounters.withLock { counters in
            if let c = counters[topic] { return c }
            let c = Counter(label: Self.prefix + "rows_produced_total", dimensions: [("table", table), ("topic", topic)])
            counters[topic] = c
            return c
        }
        counter.increment(by: count)
    }

    func retried(topic: String) {
        Counter(label: Self.prefix + "rows_retried_total", dimensions: [("table", table), ("topic", topic)]).increment()
    }

    func deadLettered(topic: String) {
        Counter(label: Self.prefix + "rows_dead_lettered_total", dimensions: [("table", table), ("topic", topic)]).increment()
    }

    func deliveryFailed(code: String) {
        Counter(label: Self.prefix + "delivery_failures_total", dimensions: [("table", table), ("code", code)]).increment()
    }
}
