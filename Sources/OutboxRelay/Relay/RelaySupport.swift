import Foundation
import Kafka
import PGClient
import Synchronization

/// Acknowledged rows a claim deletes in its own statement: their window sequences and the DELETE.
typealias FusableDeletes = (seqs: [UInt64], delete: OutboxQueries.FusedDelete)

/// A claim started ahead (``Relay/prefetchClaim(afterRows:bytes:shards:)``): what it asked for,
/// the deletes it carries, and its result once the claim session's thread has run it.
struct PrefetchedClaim: Sendable {
    let request: ClaimCursor.Request
    let fused: FusableDeletes?
    let began: Double
    let task: Task<Result<ClaimBatch, PGError>, Never>
}

struct RenewedLease: Sendable {
    let shard: Int32
    let epoch: Int64
}

/// A flag set and read from any thread (the stop flag; "another replica closed the gate").
final class AtomicFlag: Sendable {
    private let flag = Synchronization.Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
    /// Clears the flag; whether it was set.
    func take() -> Bool { flag.exchange(false, ordering: .acquiringAndReleasing) }
}

/// Dotted metadata keys used in log lines, in one place.
public enum LogKey {
    public static let replica = "outbox.replica"
    public static let table = "outbox.table"
    public static let rowId = "outbox.row_id"
    public static let shard = "outbox.shard"
    public static let topic = "kafka.topic"
    public static let error = "error"
    public static let errorCode = "kafka.error_code"
}

/// The relay's version string (recorded in the replicas table).
public enum RelayVersion {
    public static let current = "0.1.0"
}

extension Librdkafka {
    static func checkVersionForRelay() throws(RelayError) {
        do { try checkVersion() } catch { throw RelayError(kafka: error, context: "unsupported librdkafka") }
    }
}

/// This host's wall clock, µs since the Unix epoch.
func wallClockMicros() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }
