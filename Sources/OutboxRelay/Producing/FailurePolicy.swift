import Kafka

/// What happens to a row whose delivery failed — the relay's failure policy as a pure decision
/// table (no I/O, no clock, no randomness: the caller passes the jitter). The `Relay` actor
/// carries the action out: rewinds its cursor, holds the key, moves the row, logs.
public struct FailurePolicy: Sendable, Equatable {
    /// Failed attempts after which a row is dead-lettered (`--max-attempts`).
    public var maxAttempts: Int
    /// First retry delay and its cap, in seconds (`--retry-backoff-ms`, `--retry-backoff-max-ms`).
    public var backoffBase: Double
    public var backoffCap: Double

    public init(maxAttempts: Int, backoffBase: Double, backoffCap: Double) {
        self.maxAttempts = maxAttempts
        self.backoffBase = backoffBase
        self.backoffCap = backoffCap
    }

    public enum Action: Sendable, Equatable {
        /// Taken back, not failed (purged by a producer re-creation or at shutdown): read it
        /// again, in order; no attempt counted.
        case rewind
        /// Move the row to the dead-letter table with this reason.
        case deadLetter(reason: String)
        /// A batch-level refusal blamed it with others: produce it alone next, to find the culprit.
        case probeAlone
        /// Keep the row; hold its key and retry after this many seconds.
        case retry(after: Double)
    }

    /// Why the failure happened, as far as the policy cares.
    public struct Failure: Sendable {
        public var error: KafkaError
        public var persistence: DeliveryReport.Persistence
        /// The producer is being replaced or the relay is draining for shutdown.
        public var producerWithdrawn: Bool

        public init(error: KafkaError, persistence: DeliveryReport.Persistence, producerWithdrawn: Bool = false) {
            self.error = error
            self.persistence = persistence
            self.producerWithdrawn = producerWithdrawn
        }
    }

    /// Step 1: is this a withdrawal rather than a failure, and if not, its class.
    public static func classify(_ f: Failure) -> FailureClass? {
        let withdrawn = [KafkaErrorCode.purgeQueue, KafkaErrorCode.purgeInflight, KafkaErrorCode.fatal].contains(f.error.errorCode)
        if f.producerWithdrawn && withdrawn { return nil }
        return FailureClass.classify(f.error, persistence: f.persistence)
    }

    /// Step 2: does this failure count toward `maxAttempts`? Environment failures never do; a
    /// repeated failure counts only when the topic delivered something since the row's previous
    /// failure (otherwise it is the environment again, e.g. a broker outage timing everything out).
    public static func counts(_ kind: FailureClass, previousFailureAt: Double?, topicLastSuccessAt: Double?) -> Bool {
        switch kind {
        case .environment: return false
        case .badRow, .ambiguous:
            guard let previous = previousFailureAt else { return true }
            return (topicLastSuccessAt ?? -.infinity) > previous
        }
    }

    /// Step 3: the action, given the row's history *after* recording this failure.
    /// - Parameters:
    ///   - environmentFailures: environment failures seen by this relay (they lengthen the back-off).
    ///   - jitter: a factor in 0.8…1.2.
    public func action(_ kind: FailureClass, error: KafkaError, history: RetryBook.RowHistory,
                       environmentFailures: Int, jitter: Double) -> Action {
        // A batch-level error can blame innocent rows once; a synchronous refusal is exact.
        if kind == .badRow && (history.badRowStrikes >= 2 || error.code == .produce) {
            return .deadLetter(reason: "bad row: \(error.message)")
        }
        if history.countedAttempts >= maxAttempts {
            return .deadLetter(reason: "gave up after \(history.countedAttempts) attempts: \(error.message)")
        }
        if kind == .badRow { return .probeAlone }
        let attempt = max(history.countedAttempts, 1) + (kind == .environment ? min(environmentFailures, 8) : 0)
        let delay = min(backoffCap, backoffBase * pow2(min(attempt - 1, 30))) * jitter
        return .retry(after: delay)
    }

    private func pow2(_ n: Int) -> Double { Double(1 << max(0, n)) }
}
