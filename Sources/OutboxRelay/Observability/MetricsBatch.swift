/// The claim loop's per-claim and per-row metric updates, gathered on the relay's actor and handed
/// to ``RelayMetrics`` a few times a second.
///
/// Each swift-metrics call goes through the backend: a lock, a lookup, a histogram's bucket
/// search. Made as they happen, they ran once per row and several times per claim, each with
/// cold caches (at a trickle the claim thread sleeps between claims while the database and the
/// broker run). In the same windows at 500 rows/s (docs/BENCHMARKS.md), a build without these
/// calls used 0.116–0.121 ms of relay CPU per row against 0.124–0.128 ms with them as they were;
/// gathered here, 0.112–0.120 ms against 0.110–0.120 ms without them. They cost an append or an
/// addition now, and the backend sees them in one warm loop per ``flushInterval`` (and at each
/// heartbeat, and when the relay stops), so `/metrics` is at most that much behind.
struct MetricsBatch {
    /// How long samples may wait for the backend, seconds.
    static let flushInterval = 0.25
    /// Samples after which the batch is flushed however recent.
    static let maxSamples = 4_096

    var commitToAckMicros: [Int64] = []
    var claimSeconds: [Double] = []
    var deleteSeconds: [Double] = []
    var batchRows: [Int] = []
    var rowsDeleted = 0
    /// Rows produced per topic: nearly always one topic, so a short list searched from its end.
    var produced: [(topic: String, count: Int)] = []
    var inFlight: (rows: Int, bytes: Int)?
    /// Monotonic time of the oldest update not yet flushed, as its caller noted it: when the
    /// batch is due. A flush hands over whatever is gathered, noted or not.
    var pendingSince: Double?

    var sampleCount: Int { commitToAckMicros.count + claimSeconds.count + deleteSeconds.count + batchRows.count }

    mutating func noteUpdate(now: Double) {
        if pendingSince == nil { pendingSince = now }
    }

    mutating func addProduced(topic: String, count: Int) {
        guard count > 0 else { return }
        if let i = produced.lastIndex(where: { $0.topic == topic }) {
            produced[i].count += count
        } else {
            produced.append((topic, count))
        }
    }

    /// Whether the batch should go to the backend now.
    func isDue(now: Double) -> Bool {
        guard let since = pendingSince else { return false }
        return now - since >= Self.flushInterval || sampleCount >= Self.maxSamples
    }

    /// Flushes into `metrics` when ``isDue(now:)``: what every path that gathers updates calls
    /// after noting them.
    mutating func flushIfDue(now: Double, into metrics: RelayMetrics) {
        if isDue(now: now) { flush(into: metrics) }
    }

    var isEmpty: Bool { sampleCount == 0 && rowsDeleted == 0 && produced.isEmpty && inFlight == nil }

    /// Hands everything gathered to `metrics` and empties the batch (keeping its storage).
    mutating func flush(into metrics: RelayMetrics) {
        pendingSince = nil
        guard !isEmpty else { return }
        for micros in commitToAckMicros { metrics.commitToAck.recordMicroseconds(micros) }
        for seconds in claimSeconds { metrics.claimDuration.recordSeconds(seconds) }
        for seconds in deleteSeconds { metrics.deleteDuration.recordSeconds(seconds) }
        for rows in batchRows { metrics.batchRows.record(rows) }
        if rowsDeleted > 0 { metrics.rowsDeleted.increment(by: rowsDeleted) }
        for (topic, count) in produced { metrics.produced(topic: topic, count: count) }
        if let inFlight {
            metrics.inFlightRows.record(inFlight.rows)
            metrics.inFlightBytes.record(inFlight.bytes)
        }
        commitToAckMicros.removeAll(keepingCapacity: true)
        claimSeconds.removeAll(keepingCapacity: true)
        deleteSeconds.removeAll(keepingCapacity: true)
        batchRows.removeAll(keepingCapacity: true)
        rowsDeleted = 0
        produced.removeAll(keepingCapacity: true)
        inFlight = nil
    }
}
