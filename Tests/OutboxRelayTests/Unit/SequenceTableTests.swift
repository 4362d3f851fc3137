@testable import OutboxRelay
import Testing

/// The window's sequence table on its own, against a dictionary, with keys far from the
/// contiguous sequences it is built for: random keys collide on home slots, runs wrap around
/// the end of the table, and the table grows, so Robin Hood displacement and backward-shift
/// deletion are exercised where an ordering mistake loses or hides an entry.
@Suite struct SequenceTableTests {
    @Test(arguments: [(11 as UInt64, 64 as UInt64), (12, 1 << 40), (13, 300)])
    func randomKeysAgreeWithADictionary(seed: UInt64, keySpace: UInt64) {
        var rng = SplitMix(seed: seed)
        var table = SequenceTable<Int>()
        var model: [UInt64: Int] = [:]
        for step in 0..<50_000 {
            let key = 1 + rng.next() % keySpace
            switch rng.next() % 8 {
            case 0...3 where model.count < 400:
                table.insert(key, step)
                model[key] = step
            case 4:
                #expect(table.update(key) { $0 += 1 } == (model[key] != nil))
                if model[key] != nil { model[key]! += 1 }
            default:
                #expect(table.remove(key) == model.removeValue(forKey: key), "remove \(key) at step \(step)")
            }
            #expect(table.count == model.count)
            if step % 499 == 0 {
                for (k, v) in model { #expect(table[k] == v, "lookup \(k) at step \(step)") }
                #expect(Dictionary(uniqueKeysWithValues: table.entries.map { ($0.key, $0.value) }) == model)
            }
        }
    }

    @Test func contiguousSequencesRemovedOldestFirstLeaveNoStragglers() {
        var table = SequenceTable<UInt64>()
        for s in UInt64(1)...5_000 { table.insert(s, s) }
        for s in UInt64(1)...4_990 { #expect(table.remove(s) == s) }
        #expect(table.count == 10)
        for s in UInt64(4_991)...5_000 { #expect(table[s] == s) }
        #expect(table[1] == nil && table[5_001] == nil)
    }
}
