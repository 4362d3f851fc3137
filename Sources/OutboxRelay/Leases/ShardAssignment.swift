/// How the shards are spread over the live replicas (`--shard-spread`).
public enum ShardSpread: String, Sendable, CaseIterable {
    /// As few replicas hold the shards as their load needs; the others stand by, holding none,
    /// and take over when a holder dies or the holders get busy (``ShardAssignment/active``).
    case load
    /// Every live replica holds an even share, whatever the load.
    case even
}

/// A live replica as the heartbeat reads it: what the load spread decides on.
public struct ReplicaLoad: Sendable, Equatable {
    public var id: String
    /// The share of time its claim loop was not idle (claiming, producing, waiting for the
    /// broker's room), 0...1, averaged over recent heartbeats (``BusyMeter``). nil: the replica
    /// spreads evenly (`--shard-spread even`, or a version before the load spread).
    public var busy: Double?
    /// It holds an unexpired lease now.
    public var holdsShards: Bool

    public init(id: String, busy: Double?, holdsShards: Bool) {
        self.id = id
        self.busy = busy
        self.holdsShards = holdsShards
    }
}

/// Which shards a replica should hold: the claiming replicas, sorted by id, split the shards into
/// contiguous, even ranges (sizes differ by at most one). Every replica computes the same answer
/// from the same replica list, so there is no coordinator.
public enum ShardAssignment {
    public static func shards(for replica: String, among live: [String], shardCount: Int) -> Range<Int32> {
        let sorted = Array(Set(live + [replica])).sorted()
        let n = sorted.count
        let index = sorted.firstIndex(of: replica)!
        let base = shardCount / n
        let extra = shardCount % n
        let start = index * base + min(index, extra)
        let size = base + (index < extra ? 1 : 0)
        return Int32(start)..<Int32(start + size)
    }

    /// Grow the claiming set when its replicas are, together, busier than this share each.
    public static let growAt = 0.7
    /// Shrink it when one replica fewer would be busy less than this share each.
    public static let shrinkAt = 0.35

    /// The replicas that should hold shards. `live` in start order (oldest first), as the
    /// heartbeat returns them.
    ///
    /// Even spread: all of them. Load spread: the fewest that keep each below ``growAt`` busy,
    /// with a band against flapping — the count of replicas holding shards now (`current`) grows
    /// when their summed busy share exceeds `growAt × current`, and shrinks when it falls below
    /// `shrinkAt × (current − 1)` — at least one. Those chosen are the current holders first
    /// (a replica joining or a shrink moves no shard of theirs), then the oldest: a stable order
    /// that every replica derives from the same rows, like ``shards(for:among:shardCount:)``.
    /// A holder that dies leaves the live list when its heartbeat lapses; the oldest standby
    /// then takes its place. While any live replica spreads evenly (it publishes no busy share:
    /// `--shard-spread even`, or an older version during a rolling upgrade) all of them do, so
    /// that no shard is left to a replica that does not want it. While replicas disagree (one
    /// heartbeat read the table before a change, one after), the leases settle it as for any
    /// rebalance: a shard is only acquired once free or expired, and only released once its
    /// in-flight rows are settled.
    public static func active(_ live: [ReplicaLoad], spread: ShardSpread) -> [String] {
        guard spread == .load, live.count > 1, live.allSatisfy({ $0.busy != nil }) else { return live.map(\.id) }
        let current = live.filter(\.holdsShards).count
        let total = live.reduce(0) { $0 + min(1, max(0, $1.busy ?? 0)) }
        let needed = Int((total / growAt).rounded(.up))
        var count: Int
        if current == 0 {
            count = needed
        } else if total > growAt * Double(current) {
            count = max(needed, current + 1)
        } else if current > 1, total < shrinkAt * Double(current - 1) {
            count = min(needed, current - 1)
        } else {
            count = current
        }
        count = min(live.count, max(1, count))
        let ordered = live.filter(\.holdsShards) + live.filter { !$0.holdsShards }
        return ordered.prefix(count).map(\.id)
    }

    /// The shards `replica` should hold under `spread`: none when it stands by.
    public static func shards(for replica: String, among live: [ReplicaLoad], spread: ShardSpread, shardCount: Int) -> Range<Int32> {
        shards(for: replica, claiming: active(live, spread: spread), shardCount: shardCount)
    }

    /// The shards `replica` should hold when `claiming` (from ``active(_:spread:)``) claim:
    /// none when it is not among them (an empty list: it counts itself, as above).
    public static func shards(for replica: String, claiming: [String], shardCount: Int) -> Range<Int32> {
        guard claiming.contains(replica) || claiming.isEmpty else { return 0..<0 }
        return shards(for: replica, among: claiming, shardCount: shardCount)
    }
}

/// The claim loop's busy share between two heartbeats: wall time less its idle waits (a busy
/// poll's pause, a notified wait, waiting with no shard to claim), smoothed over heartbeats. A
/// wait under way at a heartbeat counts up to it (a wait can outlast a heartbeat interval; were
/// it credited only when it ended, the interval it spans would read as all busy).
public struct BusyMeter: Sendable {
    private var idle = 0.0
    private var idleSince: Double?
    private var lastAt: Double?
    /// The smoothed share, 0...1, published in the heartbeat.
    public private(set) var share = 0.0

    public init() {}

    /// The claim loop starts an idle wait.
    public mutating func beginIdle(_ now: Double) { idleSince = now }

    /// The wait begun by ``beginIdle(_:)`` ended.
    public mutating func endIdle(_ now: Double) {
        guard let since = idleSince else { return }
        idle += max(0, now - since)
        idleSince = nil
    }

    /// A heartbeat at `now`: folds the interval since the last one into ``share``.
    public mutating func sample(now: Double) {
        if let since = idleSince {
            idle += max(0, now - since)
            idleSince = now
        }
        defer { lastAt = now; idle = 0 }
        guard let lastAt, now - lastAt > 0.01 else { return }
        let busy = min(1, max(0, 1 - idle / (now - lastAt)))
        share = 0.5 * share + 0.5 * busy
    }
}
