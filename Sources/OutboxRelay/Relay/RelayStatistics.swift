/// Counters a running relay keeps (exposed to tests, `status` and metrics).
public struct RelayStatistics: Sendable, Equatable {
    /// Messages acknowledged by the broker.
    public var delivered = 0
    /// Claims after a busy-poll sleep, and declarations of the notification gate (WakeMode).
    public var busyPolls = 0
    public var gateDeclarations = 0
    /// Lapsed declarations of the notification gate this replica cleared (a replica died declared).
    public var lapsedGatesCleared = 0
    /// Rows deleted after acknowledgement.
    public var deleted = 0
    /// Failed delivery reports and synchronous produce errors (rows kept for retry).
    public var failed = 0
    /// Acknowledged rows the lease-checked DELETE did not remove (lease lost meanwhile).
    public var lostLeaseRows = 0
    /// Rows moved to the dead-letter table.
    public var deadLettered = 0
    /// Failures blamed on the environment (broker, authorization, unknown topic).
    public var environmentFailures = 0
    /// Producer instances replaced (fatal error, fencing storm, watchdog).
    public var producerRecreations = 0
    /// Rows produced alone after a batch-level bad-row error blamed them with others.
    public var probes = 0
    /// Claim reads, and how many of them were sweeps.
    public var claims = 0
    public var sweeps = 0
    /// Claims that also deleted acknowledged rows (one statement for both).
    public var fusedDeletes = 0
    /// DELETE statements of the delete loop (acknowledged rows no claim carried).
    public var deleteStatements = 0
    /// Claims of a backlog started before the previous batch was produced (Relay.prefetchClaim).
    public var prefetchedClaims = 0
    /// Waits (a busy poll's pause, a notified wait) at whose end the claim loop took the delivery
    /// reports that came meanwhile, on its own thread, instead of a woken report loop (see
    /// ReportDeferral).
    public var deferredReportTakes = 0
    /// Lost connections after which the relay read everything again (Relay.resyncAfterConnectionLoss).
    public var connectionResyncs = 0
    /// Rows read again after a lost connection that this process had seen acknowledged (the
    /// database forgot their DELETE): deleted again, not sent again (see DeliveredMemory).
    public var redeliveriesAvoided = 0
    /// Whether rows that were in the window at the last lost connection are still there (their
    /// DELETEs check `created_at` too); false again once they have all left.
    public var checksStaleRows = false
    /// Claim reads set aside unproduced because the cursor was rewound while they ran.
    public var staleClaims = 0
    /// Rows not produced because their shard's produce deadline had passed at the produce call
    /// (the ownership rule; read again by the shard's owner).
    public var ownershipRewinds = 0
    /// Monotonic times of the shutdown steps (0 until they happen): the producer closed — nothing
    /// more can be sent — and the leases released. Releasing must come after closing.
    public var producerClosedAt: Double = 0
    public var leasesReleasedAt: Double = 0
    /// Shards currently held.
    public var shardsHeld = 0
    public var inFlightRows = 0
    public var inFlightBytes = 0
    public var liveReplicas = 0
    /// Replicas that should hold shards, by this replica's last heartbeat (``ShardAssignment/active``).
    public var claimingReplicas = 0
    /// The claim session listens to the inserts' channel (a replica holding no shard does not).
    public var listensToInserts = true

    public init() {}
}

/// Where the broker acknowledged a row.
public struct DeliveryPlace: Sendable, Hashable, CustomStringConvertible {
    public let topic: String
    public let partition: Int32
    public let offset: Int64
    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }
    public var description: String { "\(topic)[\(partition)]@\(offset)" }
}
