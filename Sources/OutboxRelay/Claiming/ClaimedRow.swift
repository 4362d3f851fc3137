import Kafka

/// An outbox row read by a claim, already shaped as the Kafka message it becomes.
/// A class: the in-flight window, retry holds and dead-lettering share one instance per row
/// instead of copying the message's fields (measured: struct copies were ~6 % of relay CPU).
public final class ClaimedRow: Sendable {
    public let id: Int64
    public let shard: Int32
    /// `created_at` in microseconds since the Unix epoch.
    public let createdAtMicros: Int64
    public let message: KafkaMessage
    /// Milliseconds until the row's `not_before` (delayed delivery); 0 when due.
    public let notBeforeDelayMillis: Int64
    /// Why the row could not be shaped as a message (its headers' text did not parse); such a
    /// row is dead-lettered with this reason instead of being produced.
    public let unreadable: String?

    public init(id: Int64, shard: Int32, createdAtMicros: Int64, message: KafkaMessage, notBeforeDelayMillis: Int64 = 0,
                unreadable: String? = nil) {
        self.id = id
        self.shard = shard
        self.createdAtMicros = createdAtMicros
        self.message = message
        self.notBeforeDelayMillis = notBeforeDelayMillis
        self.unreadable = unreadable
    }

    /// Header carrying the row id (decimal text) so consumers can de-duplicate.
    public static let idHeader = "outbox-id"
}

/// One claim read: the rows (in id order) and the snapshot they were read in.
public struct ClaimBatch: Sendable {
    /// The snapshot the rows were read in (for a later page: the first page's).
    public let snapshot: PGSnapshot
    public let rows: [ClaimedRow]
    /// The database's clock when the claim ran (µs since the epoch), if it said.
    public var databaseNowMicros: Int64? = nil
    /// Rows deleted by the claim's fused DELETE (nil: the claim carried none).
    public var deleted: Int? = nil
    /// How long the statement took on this host, sent to decoded (seconds; 0 if not timed).
    public var seconds: Double = 0
    /// This host's wall clock when the statement was sent (µs since the epoch; 0 if not timed):
    /// the database's clock read during it was no earlier.
    public var sentAtWallMicros: Int64 = 0
}
