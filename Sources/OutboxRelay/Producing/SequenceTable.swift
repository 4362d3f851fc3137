/// A map from message sequence numbers to values, for the in-flight window's hot path.
///
/// Sequences are handed out one by one and live briefly, so the ones present at any moment are
/// nearly contiguous: the home slot is `sequence & mask` (no hashing), and Robin Hood linear
/// probing with backward-shift deletion handles the stragglers (a row stuck in a partition while others
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

    /// How far the entry in slot `i` sits from its home slot.
    @inline(__always)
    private func distance(_ key: UInt64, at i: Int) -> Int { (i &- (Int(truncatingIfNeeded: key) & mask)) & mask }

    private func slot(of key: UInt64) -> Int? {
        var i = Int(truncatingIfNeeded: key) & mask
        var d = 0
        while true {
            let k = keys[i]
            if k == key { return i }
            // Robin Hood order: an entry nearer its home than we are to ours ends our run.
            if k == 0 || distance(k, at: i) < d { return nil }
            i = (i + 1) & mask
            d += 1
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
        if let i = slot(of: key) {
            values[i] = value
            return
        }
        if (count + 1) * 2 > keys.count { grow() }
        // Robin Hood insertion: an entry farther from its home takes the slot of one nearer to
        // its own, which then moves on. Runs stay ordered by home slot, so a lookup or a
        // deletion stops at the first entry that sits at its home.
        var k = key
        var v: Value? = value
        var i = Int(truncatingIfNeeded: k) & mask
        var d = 0
        while true {
            let resident = keys[i]
            if resident == 0 {
                keys[i] = k
                values[i] = v
                count += 1
                return
            }
            let rd = distance(resident, at: i)
            if rd < d {
                keys[i] = k
                k = resident
                swap(&values[i], &v)
                d = rd
            }
            i = (i + 1) & mask
            d += 1
        }
    }

    /// Removes and returns the value under `key`.
    @discardableResult
    mutating func remove(_ key: UInt64) -> Value? {
        guard var hole = slot(of: key) else { return nil }
        let removed = values[hole]
        // Backward-shift deletion: pull the following entries back one slot until an empty slot
        // or an entry at its home. (Scanning to the next empty slot instead walked the whole run
        // of contiguous sequences on every removal: ~6 % of relay CPU in a drain profile.)
        while true {
            let j = (hole + 1) & mask
            let k = keys[j]
            if k == 0 || distance(k, at: j) == 0 { break }
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
