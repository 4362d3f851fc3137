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
