/// The broker's final word on one produced message.
public struct DeliveryReport: Sendable {
    /// Whether a failed message may nevertheless be in the log (librdkafka's message status).
    public enum Persistence: Sendable, Equatable {
        case notPersisted, possiblyPersisted, persisted
    }

    /// The non-zero opaque given to `produce`.
    public let opaque: UInt64
    /// `nil` when the broker acknowledged the message.
    public let error: KafkaError?
    public let persistence: Persistence
    /// Partition and offset; only meaningful when `error == nil` (failed reports carry junk offsets).
    public let partition: Int32
    public let offset: Int64

    public init(opaque: UInt64, error: KafkaError?, persistence: Persistence, partition: Int32, offset: Int64) {
        self.opaque = opaque
        self.error = error
        self.persistence = persistence
        self.partition = partition
        self.offset = error == nil ? offset : -1
    }

    public var isDelivered: Bool { error == nil }
}
