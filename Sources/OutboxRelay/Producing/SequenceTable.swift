/// A map from message sequence numbers to values, for the in-flight window's hot path.
///
/// Sequences are handed out one by one and live briefly, so the ones present at any moment are
/// nearly contiguous: the home slot is `sequence & mask` (no hashing), and linear probing with
/// backward-shift deletion handles the stragglers (a row stuck in a partition while others
/// move on). Capacity stays a power of two at most half full; memory follows the number of
/// entries, not the span of sequences. `Dictionary` did the same with SipHash on every admit,
/// acknowledge and settle: a few per cent of the relay's CPU in a drain profile.
struct SequenceTable<Value> {
    private var keys: [UInt64]          // 0 = empty (sequences start at 1)
    private var values: [Value?]
    private var mask: Int
    private(set) var count = 0

    init(minimumCapacity: Int = 16) {
        var capacity = 16
        while capacity < minimumCapacity * 2 { capacity <<= 1 }
        keys = [UInt64](repeating: 0, count: capacity)
        values = [Value?](repeating: nil, count: capacity)
        mask = capacity - 1
    }

    private func slot(of key: UInt64) -> Int? {
        var i = Int(truncatingIfNeeded: key) & mask
        while true {
            let k = keys[i]
            if k == key { return i }
            if k == 0 { return nil }
            i = (i + 1) & mask
        }
    }

    subscript(key: UInt64) -> Value? {
        guard let i = slot(of: key) else { return nil }
        return values[i]
    }

    /// Changes the value stored under `key` in place; false when absent.
    @discardableResult
    mutating func update(_ key: UInt64, _ body: (inout Value) -> Void) -> Bool {
        guard let i = slot(of: key) else { return false }
        body(&values[i]!)
        return true
    }

    /// Inserts or replaces. `key` must not be 0.
    mutating func insert(_ key: UInt64, _ value: Value) {
        precondition(key != 0, "sequence 0 is reserved")
        if (count + 1) * 2 > keys.count { grow() }
        var i = Int(truncatingIfNeeded: key) & mask
        while keys[i] != 0 && keys[i] != key { i = (i + 1) & mask }
        if keys[i] == 0 { count += 1 }
        keys[i] = key
        values[i] = value
    }

    /// Removes and returns the value under `key`.
    @discardableResult
    mutating func remove(_ key: UInt64) -> Value? {
        guard var hole = slot(of: key) else { return nil }
        let removed = values[hole]
        // Backward-shift deletion: pull later entries of the probe run into the hole unless their
        // home slot lies cyclically after the hole (then they are already where a lookup finds them).
        var j = hole
        while true {
            j = (j + 1) & mask
            let k = keys[j]
            if k == 0 { break }
            let home = Int(truncatingIfNeeded: k) & mask
            let stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j)
            if stays { continue }
            keys[hole] = k
            values[hole] = values[j]
            hole = j
        }
        keys[hole] = 0
        values[hole] = nil
        count -= 1
        return removed
    }

    private mutating func grow() {
        let oldKeys = keys, oldValues = values
        let capacity = keys.count * 2
        keys = [UInt64](repeating: 0, count: capacity)
        values = [Value?](repeating: nil, count: capacity)
        mask = capacity - 1
        count = 0
        for (i, k) in oldKeys.enumerated() where k != 0 { insert(k, oldValues[i]!) }
    }

    /// Every (key, value), in no particular order.
    var entries: [(key: UInt64, value: Value)] {
        var out: [(key: UInt64, value: Value)] = []
        out.reserveCapacity(count)
        for (i, k) in keys.enumerated() where k != 0 { out.append((k, values[i]!)) }
        return out
    }

    /// Every value, in no particular order.
    var allValues: [Value] {
        var out: [Value] = []
        out.reserveCapacity(count)
        for (i, k) in keys.enumerated() where k != 0 { out.append(values[i]!) }
        return out
    }
}

extension SequenceTable: Sendable where Value: Sendable {}
