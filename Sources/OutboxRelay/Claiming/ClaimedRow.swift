import Kafka

/// An outbox row read by a claim, already shaped as the Kafka message it becomes.
public struct ClaimedRow: Sendable {
    public let id: Int64
    public let shard: Int32
    /// `created_at` in microseconds since the Unix epoch.
    public let createdAtMicros: Int64
    public let message: KafkaMessage
    /// Milliseconds until the row's `not_before` (delayed delivery); 0 when due.
    public var notBeforeDelayMillis: Int64 = 0

    /// Header carrying the row id (decimal text) so consumers can de-duplicate.
    public static let idHeader = "outbox-id"
}

/// One claim read: the rows (in id order) and the snapshot they were read in.
public struct ClaimBatch: Sendable {
    public let snapshotXmin: UInt64
    public let snapshotXmax: UInt64
    public let rows: [ClaimedRow]
}
