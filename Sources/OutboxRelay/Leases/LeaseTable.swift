/// This replica's view of the shard leases it holds: a pure state machine, no I/O.
///
/// Each held shard is `active` (claimed and produced) or `draining` (being handed over: no new
/// claims; released once its in-flight rows are settled). Validity is tracked on the local
/// monotonic clock from the moment a renewal was *sent*, minus a safety margin, so the local view
/// always expires before the database's lease does.
///
/// **The ownership rule.** A message produced now can stay in librdkafka — and land — until its
/// final delivery report, up to `deliveryBound` seconds later (message timeout + reconnect
/// back-off). So a shard is produced to only while `now + deliveryBound < validUntil`: every
/// message of this tenure has its final report before the database lease can expire and another
/// replica can take the shard. The relay checks this per produce call (``produceDeadlines()``),
/// so a replica frozen in the middle of a batch does not resume producing a shard it no longer owns.
public struct LeaseTable: Sendable, Equatable {
    public enum Phase: Sendable, Equatable { case active, draining }

    public struct Lease: Sendable, Equatable {
        public var epoch: Int64
        public var validUntil: Double
        public var phase: Phase

        /// Claimed and produced to now: active, and still valid when a message produced now
        /// has had its final report.
        func isProducible(now: Double, deliveryBound: Double) -> Bool {
            phase == .active && now + deliveryBound < validUntil
        }
    }

    public private(set) var leases: [Int32: Lease] = [:] {
        didSet { derive() }
    }
    public let shardCount: Int
    /// Seconds from a produce call to the message's final report at the latest.
    public let deliveryBound: Double

    // Views derived from `leases` once per change, not per claim, produce or report: each was a
    // walk (and some a sort) of up to 256 leases per claim, a fifth of the relay actor's CPU in a
    // trickle (perf, 100 rows/s). Leases change a few times a minute (renewals, rebalances).
    // `leases` is changed by the mutating methods only, each as one assignment of a whole
    // dictionary (see `update`), so `derive()` runs once per change, not once per shard.
    /// Active shards, sorted.
    private var active: [Int32] = []
    /// The earliest `validUntil` of the active leases: until `now + deliveryBound` reaches it,
    /// every active shard is producible.
    private var earliestValidUntil: Double = .infinity
    private var epochs: [Int64] = []
    private var deadlines: [Double] = []
    public private(set) var heldShards: [Int32] = []
    /// Shards being handed over.
    public private(set) var drainingShards: Set<Int32> = []

    public init(shardCount: Int, deliveryBound: Double = 0) {
        self.shardCount = shardCount
        self.deliveryBound = deliveryBound
        derive()
    }

    private mutating func derive() {
        var active: [Int32] = []
        var draining = Set<Int32>()
        var earliest = Double.infinity
        var epochs = [Int64](repeating: 0, count: shardCount)
        var deadlines = [Double](repeating: -.infinity, count: shardCount)
        for (shard, lease) in leases {
            if Int(shard) < shardCount { epochs[Int(shard)] = lease.epoch }
            switch lease.phase {
            case .active:
                active.append(shard)
                earliest = min(earliest, lease.validUntil)
                if Int(shard) < shardCount { deadlines[Int(shard)] = lease.validUntil - deliveryBound }
            case .draining:
                draining.insert(shard)
            }
        }
        active.sort()
        self.active = active
        self.earliestValidUntil = earliest
        self.epochs = epochs
        self.deadlines = deadlines
        self.heldShards = leases.keys.sorted()
        self.drainingShards = draining
    }

    /// Changes the leases through a copy, so that the views are derived once for the whole change.
    private mutating func update(_ change: (inout [Int32: Lease]) -> Void) {
        var copy = leases
        change(&copy)
        leases = copy
    }

    /// What one heartbeat should do.
    public struct Plan: Sendable, Equatable {
        /// Held shards no longer assigned to this replica: stop claiming them.
        public var drain: [Int32]
        /// Draining shards with nothing in flight: release now.
        public var release: [Int32]
        /// Assigned shards not held: try to acquire.
        public var acquire: [Int32]
        /// Draining shards assigned to this replica again: resume claiming.
        public var reactivate: [Int32] = []
    }

    public func plan(desired: Range<Int32>, inFlightByShard: [Int32: Int]) -> Plan {
        var drain: [Int32] = []
        var release: [Int32] = []
        var reactivate: [Int32] = []
        for (shard, lease) in leases {
            let wanted = desired.contains(shard)
            switch lease.phase {
            case .active where !wanted:
                drain.append(shard)
                if (inFlightByShard[shard] ?? 0) == 0 { release.append(shard) }
            case .draining where wanted:
                reactivate.append(shard)
            case .draining:
                if (inFlightByShard[shard] ?? 0) == 0 { release.append(shard) }
            case .active:
                break
            }
        }
        let acquire = desired.filter { leases[$0] == nil }
        return Plan(drain: drain.sorted(), release: release.sorted(), acquire: acquire, reactivate: reactivate.sorted())
    }

    /// Marks shards as draining: no new claims, released once settled.
    public mutating func drain(_ shards: [Int32]) {
        update { leases in for s in shards { leases[s]?.phase = .draining } }
    }

    /// Draining shards become active again.
    public mutating func reactivate(_ shards: [Int32]) {
        update { leases in for s in shards { leases[s]?.phase = .active } }
    }

    /// Applies a renewal: `renewed` are the (shard, epoch) rows the database still lists for us.
    /// Returns the shards lost (taken over by someone else).
    @discardableResult
    public mutating func renewed(_ renewed: [(shard: Int32, epoch: Int64)], sentAt: Double, duration: Double, margin: Double) -> [Int32] {
        var still = Set<Int32>()
        var lost: [Int32] = []
        update { leases in
            for (shard, epoch) in renewed {
                guard var lease = leases[shard], lease.epoch == epoch else { continue }
                lease.validUntil = sentAt + duration - margin
                leases[shard] = lease
                still.insert(shard)
            }
            lost = leases.keys.filter { !still.contains($0) }.sorted()
            for s in lost { leases[s] = nil }
        }
        return lost
    }

    /// Adds newly acquired leases.
    public mutating func acquired(_ acquired: [(shard: Int32, epoch: Int64)], sentAt: Double, duration: Double, margin: Double) {
        update { leases in
            for (shard, epoch) in acquired {
                leases[shard] = Lease(epoch: epoch, validUntil: sentAt + duration - margin, phase: .active)
            }
        }
    }

    public mutating func released(_ shards: [Int32]) {
        update { leases in for s in shards { leases[s] = nil } }
    }

    /// Shards to claim rows from now: producible (no point reading rows that may not be sent).
    public func claimable(now: Double) -> [Int32] {
        if now + deliveryBound < earliestValidUntil { return active }
        return active.filter { leases[$0]!.isProducible(now: now, deliveryBound: deliveryBound) }
    }

    /// The epoch to produce under, or nil when the shard must not be produced to now.
    public func producibleEpoch(_ shard: Int32, now: Double) -> Int64? {
        guard let lease = leases[shard], lease.isProducible(now: now, deliveryBound: deliveryBound) else { return nil }
        return lease.epoch
    }

    /// Per shard (index = shard): the monotonic time until which it may be produced to
    /// (`-infinity` when not at all). Built once per claimed batch; each produce call then
    /// compares the clock *at that call* with its shard's deadline — one clock read per row — so
    /// a pause between two rows of a batch cannot outlast the lease unnoticed.
    public func produceDeadlines() -> [Double] { deadlines }

    /// Epoch per shard (index = shard) for the lease-checked DELETE; 0 where not held.
    public func epochArray() -> [Int64] { epochs }

    /// The epoch `shard` is held under (active or draining), 0 where not held: what a DELETE of
    /// one of its rows checks.
    public func heldEpoch(_ shard: Int32) -> Int64 { leases[shard]?.epoch ?? 0 }
}
