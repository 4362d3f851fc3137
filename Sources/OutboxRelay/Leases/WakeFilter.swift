import Synchronization

/// Which notifications should wake this replica's claim loop: those naming a shard it holds.
///
/// The insert trigger's notification carries the inserted row's shard (`shards:17`; the
/// statement-level trigger of an older migration sends a statement's shards, `shards:3,17`, or
/// `*` when it touched more than ``maxListed``). Every replica receives every notification
/// (one channel), but only the owner of one of those shards claims: without this, each row woke —
/// and cost a claim statement on — every replica (a thundering herd that grew with replicas).
/// An empty payload (a trigger of an older version) or anything unreadable wakes everyone.
///
/// Read on the listener's thread, updated by the lease loop: a lock around a bitmap.
public final class WakeFilter: Sendable {
    /// A statement touching more shards than this notified `*` (wake every replica), with the
    /// statement-level trigger of an older migration.
    public static let maxListed = 64
    public static let payloadPrefix = "shards:"

    private let bits: Mutex<[UInt64]>

    public init(shardCount: Int) {
        bits = Mutex([UInt64](repeating: 0, count: max(1, (shardCount + 63) / 64)))
    }

    /// The shards this replica claims now.
    public func update(_ shards: [Int32]) {
        bits.withLock { b in
            for i in b.indices { b[i] = 0 }
            for s in shards where s >= 0 && Int(s) / 64 < b.count { b[Int(s) / 64] |= 1 << UInt64(s % 64) }
        }
    }

    /// Whether a notification with this payload concerns this replica.
    public func wakes(_ payload: String) -> Bool {
        guard payload.hasPrefix(Self.payloadPrefix) else { return true }
        let list = payload.utf8.dropFirst(Self.payloadPrefix.utf8.count)
        return bits.withLock { b in
            var value = 0
            var digits = 0
            for c in list {
                if c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") {
                    value = value * 10 + Int(c - UInt8(ascii: "0"))
                    digits += 1
                    if value >= b.count * 64 { return true }
                } else if c == UInt8(ascii: ",") {
                    if digits == 0 { return true }
                    if b[value / 64] & (1 << UInt64(value % 64)) != 0 { return true }
                    value = 0
                    digits = 0
                } else {
                    return true  // unreadable: better a spurious claim than a missed one
                }
            }
            if digits == 0 { return true }
            return b[value / 64] & (1 << UInt64(value % 64)) != 0
        }
    }
}
