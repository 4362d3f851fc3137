/// Per-key retry holds and per-row failure history: a pure struct, no I/O.
///
/// When a row fails and is to be retried, its key is *held* until the row's retry time: later
/// rows of the same topic and key are not produced (they would overtake it); everything else flows.
/// When the time comes, the relay rewinds its cursor to the held row and re-reads it and the
/// deferred rows of its key in id order. Rows with a NULL key have no order to keep and hold
/// only themselves.
public struct RetryBook: Sendable {
    /// Order is kept per topic and key (Kafka orders per partition of a topic), so a held key
    /// of one topic never holds back the same key in another topic.
    public enum HoldKey: Hashable, Sendable {
        case key(topic: String, key: [UInt8])
        case row(Int64)
    }

    struct Hold: Sendable {
        var rowId: Int64
        var notBefore: Double
    }

    /// What is remembered about a row that failed.
    public struct RowHistory: Sendable, Equatable {
        /// Failures that count toward the attempt limit.
        public var countedAttempts = 0
        /// Failures classified as a bad row (a batch-level error may blame an innocent row once).
        public var badRowStrikes = 0
        public var lastFailureAt: Double = 0
        public init() {}
    }

    private var holds: [HoldKey: Hold] = [:]
    public private(set) var history: [Int64: RowHistory] = [:]

    public init() {}

    public static func holdKey(topic: String, key: [UInt8]?, rowId: Int64) -> HoldKey {
        key.map { .key(topic: topic, key: $0) } ?? .row(rowId)
    }

    public var isEmpty: Bool { holds.isEmpty }
    public var heldCount: Int { holds.count }

    /// Holds `key` from `rowId` on until `notBefore`.
    public mutating func hold(_ key: HoldKey, rowId: Int64, until notBefore: Double) {
        if let h = holds[key] {
            holds[key] = Hold(rowId: min(h.rowId, rowId), notBefore: max(h.notBefore, notBefore))
        } else {
            holds[key] = Hold(rowId: rowId, notBefore: notBefore)
        }
    }

    /// True when a row must not be produced now: its key is held at or before its id.
    public func isHeld(_ key: HoldKey, rowId: Int64) -> Bool {
        guard let h = holds[key] else { return false }
        return rowId >= h.rowId
    }

    /// Releases holds whose time has come; returns the lowest released row id (rewind below it).
    ///
    /// A due hold whose key still has rows awaiting their delivery report (`busy`) is kept and
    /// looked at again after `recheck` seconds (or at the next call): those rows were produced
    /// before the failure and may fail too, and re-producing the held row now would let the
    /// key's later rows (read again with it) overtake them. Once they are reported, the retry
    /// re-reads every failed row of the key together, in id order.
    public mutating func releaseDue(now: Double, recheck: Double = 0.02, busy: (HoldKey) -> Bool = { _ in false }) -> Int64? {
        var lowest: Int64?
        for (k, h) in holds where h.notBefore <= now {
            if busy(k) {
                holds[k]?.notBefore = now + recheck
                continue
            }
            holds[k] = nil
            lowest = min(lowest ?? h.rowId, h.rowId)
        }
        return lowest
    }

    /// Drops the hold on `key` at once, whatever its time; returns the row it held from.
    @discardableResult
    public mutating func clear(_ key: HoldKey) -> Int64? {
        holds.removeValue(forKey: key)?.rowId
    }

    /// True when some hold's time has come.
    public func anyDue(now: Double) -> Bool { holds.values.contains { $0.notBefore <= now } }

    /// When the next hold expires.
    public var nextDue: Double? { holds.values.map(\.notBefore).min() }

    /// Records a failure; returns the updated history. `counts` says whether it counts toward
    /// the attempt limit (an environment failure never does).
    public mutating func recordFailure(rowId: Int64, counts: Bool, badRow: Bool, now: Double) -> RowHistory {
        var h = history[rowId] ?? RowHistory()
        if counts { h.countedAttempts += 1 }
        if badRow { h.badRowStrikes += 1 }
        h.lastFailureAt = now
        history[rowId] = h
        return h
    }

    /// Forget a row that was delivered or dead-lettered.
    public mutating func forget(rowId: Int64) {
        history[rowId] = nil
    }
}

extension ClaimedRow {
    /// What a retry hold of this row holds: its topic and key (or the row alone, without a key).
    var holdKey: RetryBook.HoldKey { RetryBook.holdKey(topic: message.topic, key: message.keyBytes, rowId: id) }
}
