import OutboxRelay
import Testing

@Suite struct InFlightWindowTests {
    @Test func boundsRowsAndBytes() {
        var w = InFlightWindow(maxRows: 3, maxBytes: 100)
        #expect(w.rowRoom == 3)
        let a = w.admit(rowId: 1, shard: 0, bytes: 40, createdAtMicros: 0)
        _ = w.admit(rowId: 2, shard: 1, bytes: 40, createdAtMicros: 0)
        #expect(w.rowRoom == 1)
        _ = w.admit(rowId: 3, shard: 1, bytes: 40, createdAtMicros: 0)
        #expect(w.rowRoom == 0)
        #expect(w.bytes == 120)
        #expect(w.byShard == [0: 1, 1: 2])
        #expect(w.acknowledge(a) != nil)
        #expect(w.awaitingReport == 2)
        #expect(w.rowRoom == 0, "acknowledged rows occupy the window until deleted")
        w.settle(a)
        #expect(w.bytes == 80)
        #expect(w.rowRoom == 1)
        var b = InFlightWindow(maxRows: 10, maxBytes: 100)
        _ = b.admit(rowId: 1, shard: 0, bytes: 60, createdAtMicros: 0)
        #expect(b.rowRoom == 9)
        _ = b.admit(rowId: 2, shard: 0, bytes: 60, createdAtMicros: 0)
        #expect(b.rowRoom == 0, "over the byte limit")
    }

    /// What the relay asks before it forgets which rows were in the window at a lost connection.
    @Test func itTellsWhetherRowsBelowASequenceAreStillIn() {
        var w = InFlightWindow(maxRows: 10, maxBytes: 1000)
        let a = w.admit(rowId: 1, shard: 0, bytes: 10, createdAtMicros: 0)
        let mark = w.nextSequenceNumber
        let b = w.admit(rowId: 2, shard: 0, bytes: 10, createdAtMicros: 0)
        #expect(w.holdsSequence(below: mark))
        _ = w.acknowledge(b)
        w.settle(b)
        #expect(w.holdsSequence(below: mark), "the row admitted before the mark is still in")
        _ = w.acknowledge(a)
        #expect(w.holdsSequence(below: mark), "acknowledged but not deleted: still in")
        w.settle(a)
        #expect(!w.holdsSequence(below: mark))
        _ = w.admit(rowId: 3, shard: 0, bytes: 10, createdAtMicros: 0)
        #expect(!w.holdsSequence(below: mark), "rows admitted after the mark do not count")
    }

    @Test func reportsAreAppliedOnce() {
        var w = InFlightWindow(maxRows: 10, maxBytes: 1000)
        let s = w.admit(rowId: 7, shard: 2, bytes: 10, createdAtMicros: 0)
        #expect(w.acknowledge(s)?.rowId == 7)
        #expect(w.acknowledge(s) == nil)
        #expect(w.fail(s) == nil, "an acknowledged row cannot fail afterwards")
        w.settle(s)
        #expect(w.isEmpty)
        #expect(w.byShard.isEmpty)
    }

    /// The pacer's sample is steered into the wait its row was claimed after: the acknowledgement
    /// may come after the relay switched between polling and notifications.
    @Test func anAcknowledgedRowTellsTheWaitItWasClaimedAfter() {
        var w = InFlightWindow(maxRows: 10, maxBytes: 1000)
        let polled = w.admit(rowId: 1, shard: 0, bytes: 10, createdAtMicros: 0, pathStartMicros: 5, claimedPolling: true)
        let notified = w.admit(rowId: 2, shard: 0, bytes: 10, createdAtMicros: 0, pathStartMicros: 6)
        let a = w.acknowledge(polled)
        #expect(a?.claimedPolling == true)
        #expect(a?.pathStartMicros == 5)
        #expect(w.acknowledge(notified)?.claimedPolling == false, "a notified wait by default")
    }

    @Test func aFailedRowLeavesTheWindowAtOnce() {
        var w = InFlightWindow(maxRows: 10, maxBytes: 1000)
        let s = w.admit(rowId: 9, shard: 3, bytes: 10, createdAtMicros: 0)
        #expect(w.rowIds == [9])
        #expect(w.fail(s)?.rowId == 9)
        #expect(w.isEmpty)
        #expect(w.awaitingReport == 0)
        let c = w.admit(rowId: 10, shard: 3, bytes: 10, createdAtMicros: 0)
        w.cancel(c)
        #expect(w.isEmpty)
    }
}

/// The window's sequence table against a plain dictionary, under random admits, reports and
/// settles, with some rows left unreported for long stretches (stragglers make probe runs wrap).
@Suite struct InFlightWindowModelTests {
    struct Model { var rowId: Int64; var shard: Int32; var acknowledged: Bool }

    @Test(arguments: [1, 2, 3, 4])
    func randomOperationsAgreeWithADictionary(seed: UInt64) {
        var rng = SplitMix(seed: seed)
        var w = InFlightWindow(maxRows: 64, maxBytes: 1 << 30)
        var model: [UInt64: Model] = [:]
        var nextRow: Int64 = 1
        for step in 0..<60_000 {
            let live = Array(model.keys)
            switch rng.next() % 10 {
            case 0...3 where model.count < 200:
                let shard = Int32(rng.next() % 8)
                let seq = w.admit(rowId: nextRow, shard: shard, bytes: 1, createdAtMicros: 0)
                #expect(model[seq] == nil, "sequence \(seq) reused at step \(step)")
                model[seq] = Model(rowId: nextRow, shard: shard, acknowledged: false)
                nextRow += 1
            case 4...5 where !live.isEmpty:
                // Stragglers: sequences ending in 7 are rarely reported.
                let seq = live[Int(rng.next() % UInt64(live.count))]
                if seq % 10 == 7 && rng.next() % 50 != 0 { continue }
                let expected = model[seq]!.acknowledged ? nil : model[seq]!.rowId
                #expect(w.acknowledge(seq)?.rowId == expected)
                model[seq]!.acknowledged = true
            case 6 where !live.isEmpty:
                let seq = live[Int(rng.next() % UInt64(live.count))]
                if model[seq]!.acknowledged {
                    #expect(w.fail(seq) == nil)
                } else {
                    #expect(w.fail(seq)?.rowId == model[seq]!.rowId)
                    model[seq] = nil
                }
            case 7...9 where !live.isEmpty:
                let seq = live[Int(rng.next() % UInt64(live.count))]
                w.settle(seq)
                if model[seq]!.acknowledged { model[seq] = nil }
            default:
                break
            }
            if step % 997 == 0 || step == 59_999 {
                #expect(w.rows == model.count)
                #expect(w.awaitingReport == model.values.filter { !$0.acknowledged }.count)
                #expect(Set(w.rowIds) == Set(model.values.map(\.rowId)))
                var perShard: [Int32: Int] = [:]
                for m in model.values { perShard[m.shard, default: 0] += 1 }
                #expect(w.byShard == perShard)
                for (seq, m) in model { #expect(w.entry(seq)?.rowId == m.rowId) }
            }
        }
    }
}

@Suite struct ClaimLimitTests {
    @Test func theByteBudgetNotTheBacklogBoundsAClaim() {
        var w = InFlightWindow(maxRows: 5000, maxBytes: 16 << 20)
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: nil) == 32, "sizes unknown: start small")
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: 300) == 1000, "small rows: a full batch")
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: 900_000) == 18, "large rows: what the byte budget holds")
        _ = w.admit(rowId: 1, shard: 0, bytes: 16 << 20, createdAtMicros: 0)
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: 300) == 0 || w.rowRoom == 0, "a full byte budget: nothing")
    }

    /// A claim started before the previous batch is admitted (the relay's prefetch) reads only
    /// what fits beside that batch.
    @Test func aReservedBatchIsTakenOffTheRoomFirst() {
        var w = InFlightWindow(maxRows: 2500, maxBytes: 1 << 20)
        for id in 1...1000 { _ = w.admit(rowId: Int64(id), shard: 0, bytes: 300, createdAtMicros: 0) }
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: 300) == 1000)
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: 300, reservingRows: 1000, reservingBytes: 300_000) == 500,
                "2500 rows at most, 1000 in the window and 1000 about to be")
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: 300, reservingRows: 1000, reservingBytes: 600_000) == 495,
                "the bytes left (1 MiB − 900 000) over 300 bytes a row")
        #expect(w.claimLimit(batchSize: 1000, averageRowBytes: 300, reservingRows: 0, reservingBytes: 1 << 20) == 1,
                "a reservation that fills the byte budget leaves no room (at least 1, as ever)")
    }
}

/// The tests' one seeded random number generator (SplitMix64): reproducible from its seed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
