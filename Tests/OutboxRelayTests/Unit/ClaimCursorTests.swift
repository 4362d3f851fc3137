import OutboxRelay
import Testing

@Suite struct ClaimCursorTests {
    typealias Obs = ClaimCursor.Observation

    @Test func forwardReadsAdvanceTheCursorWithoutExclusions() {
        var c = ClaimCursor()
        var r = c.nextRequest(limit: 20, inFlight: [], now: 0, sweepInterval: 1)
        // A fresh cursor sweeps once from the start.
        #expect(r.lowerBound == 0)
        #expect(r.mode == .sweep)
        c.observe(r, Obs(snapshotXmin: 5, snapshotXmax: 5, lastRowId: 10, rowCount: 10), now: 0)
        #expect(c.floor == 10, "no transaction in progress: everything up to the cursor is settled")
        r = c.nextRequest(limit: 20, inFlight: Array(1...10), now: 0.01, sweepInterval: 1)
        #expect(r.mode == .forward)
        #expect(r.lowerBound == 10)
        #expect(r.excluded.isEmpty, "in-flight rows below the lower bound need no exclusion")
    }

    @Test func aForwardReadWithNothingInProgressSettlesWhatItCovered() {
        var c = ClaimCursor()
        var r = c.nextRequest(limit: 10, inFlight: [], now: 0, sweepInterval: 0.25)
        c.observe(r, Obs(snapshotXmin: 5, snapshotXmax: 5, lastRowId: 10, rowCount: 10), now: 0)
        r = c.nextRequest(limit: 10, inFlight: Array(1...10), now: 0.01, sweepInterval: 0.25)
        c.observe(r, Obs(snapshotXmin: 6, snapshotXmax: 6, lastRowId: 20, rowCount: 10), now: 0.01)
        #expect(c.floor == 20, "no transaction in progress and settled below: the floor follows the cursor")
        #expect(c.nextRequest(limit: 10, inFlight: Array(1...20), now: 1, sweepInterval: 0.25).mode == .forward,
                "nothing to sweep, however long ago the last sweep was")
        // With a transaction in progress the floor stays until a sweep after it ends.
        r = c.nextRequest(limit: 10, inFlight: [], now: 1, sweepInterval: 0.25)
        c.observe(r, Obs(snapshotXmin: 7, snapshotXmax: 8, lastRowId: 30, rowCount: 10), now: 1)
        #expect(c.floor == 20)
        // A forward read with nothing in progress cannot settle past a floor that lags behind
        // its starting point (the earlier transaction may have committed a row below 30).
        r = c.nextRequest(limit: 10, inFlight: [], now: 1.01, sweepInterval: 0.25)
        #expect(r.mode == .forward)
        c.observe(r, Obs(snapshotXmin: 8, snapshotXmax: 8, lastRowId: 35, rowCount: 5), now: 1.01)
        #expect(c.floor == 20)
        #expect(c.nextRequest(limit: 10, inFlight: [], now: 1.3, sweepInterval: 0.25).mode == .sweep)
    }

    @Test func aRowCommittedLateIsSweptOnceItsTransactionEnded() {
        var c = ClaimCursor()
        var now = 0.0
        // Read 1: ids 2...3 visible; txn 10 (holding id 1) in progress: xmin 10, xmax 12.
        var r = c.nextRequest(limit: 100, inFlight: [], now: now, sweepInterval: 0.25)
        c.observe(r, Obs(snapshotXmin: 10, snapshotXmax: 12, lastRowId: 3, rowCount: 2), now: now)
        #expect(c.floor == 0, "cannot advance the floor past an in-progress transaction")
        now += 0.01
        // Read 2: nothing new; txn 10 still running.
        r = c.nextRequest(limit: 100, inFlight: [2, 3], now: now, sweepInterval: 0.25)
        #expect(r.mode == .forward)
        c.observe(r, Obs(snapshotXmin: 10, snapshotXmax: 12, lastRowId: nil, rowCount: 0), now: now)
        #expect(c.ripeTarget == 0)
        // Read 3: txn 10 has ended (xmin reached 12): the checkpoint ripens.
        now += 0.01
        r = c.nextRequest(limit: 100, inFlight: [2, 3], now: now, sweepInterval: 0.25)
        c.observe(r, Obs(snapshotXmin: 12, snapshotXmax: 13, lastRowId: nil, rowCount: 0), now: now)
        #expect(c.ripeTarget == 3)
        // Next request (after the sweep interval) sweeps from the floor, excluding in-flight rows.
        now += 0.3
        r = c.nextRequest(limit: 100, inFlight: [2, 3], now: now, sweepInterval: 0.25)
        #expect(r.mode == .sweep)
        #expect(r.lowerBound == 0)
        #expect(r.excluded == [2, 3])
        // The sweep finds the late row 1; the floor moves to the ripe target.
        c.observe(r, Obs(snapshotXmin: 13, snapshotXmax: 14, lastRowId: 1, rowCount: 1), now: now)
        #expect(c.floor == 3)
        #expect(c.cursor == 3)
    }

    @Test func sweepsAreRateLimited() {
        var c = ClaimCursor()
        let r0 = c.nextRequest(limit: 10, inFlight: [], now: 0, sweepInterval: 1)
        c.observe(r0, Obs(snapshotXmin: 10, snapshotXmax: 11, lastRowId: 5, rowCount: 5), now: 0)
        let r1 = c.nextRequest(limit: 10, inFlight: [], now: 0.1, sweepInterval: 1)
        c.observe(r1, Obs(snapshotXmin: 11, snapshotXmax: 12, lastRowId: 7, rowCount: 2), now: 0.1)
        #expect(c.ripeTarget == 5)
        #expect(c.nextRequest(limit: 10, inFlight: [], now: 0.5, sweepInterval: 1).mode == .forward)
        #expect(c.nextRequest(limit: 10, inFlight: [], now: 1.1, sweepInterval: 1).mode == .sweep)
    }

    @Test func aTruncatedSweepKeepsSweepingUntilCovered() {
        var c = ClaimCursor()
        let r = c.nextRequest(limit: 100, inFlight: [], now: 0, sweepInterval: 1)
        c.observe(r, Obs(snapshotXmin: 1, snapshotXmax: 1, lastRowId: 50, rowCount: 50), now: 0)
        #expect(!c.sweepForced)
        #expect(c.floor == 50)
        c.rewind(below: 10)
        let s1 = c.nextRequest(limit: 2, inFlight: [], now: 0, sweepInterval: 1)
        #expect(s1.mode == .sweep && s1.lowerBound == 9)
        // Only ids 10 and 11 fit: the range up to the cursor (50) is not covered yet.
        c.observe(s1, Obs(snapshotXmin: 2, snapshotXmax: 3, lastRowId: 11, rowCount: 2), now: 0)
        #expect(c.sweepForced)
        #expect(c.nextRequest(limit: 2, inFlight: [10, 11], now: 0, sweepInterval: 1).mode == .sweep)
        // A truncated sweep that reached past the cursor leaves forward reads to continue.
        let s2 = c.nextRequest(limit: 2, inFlight: [10, 11], now: 0, sweepInterval: 1)
        c.observe(s2, Obs(snapshotXmin: 3, snapshotXmax: 4, lastRowId: 52, rowCount: 2), now: 0)
        #expect(!c.sweepForced)
        #expect(c.cursor == 52)
    }

    @Test func rewindReadsAFailedRowAgainInIdOrder() {
        var c = ClaimCursor()
        let r = c.nextRequest(limit: 100, inFlight: [], now: 0, sweepInterval: 1)
        c.observe(r, Obs(snapshotXmin: 3, snapshotXmax: 3, lastRowId: 50, rowCount: 50), now: 0)
        #expect(c.floor == 50)
        c.rewind(below: 20)
        let again = c.nextRequest(limit: 100, inFlight: [21, 22], now: 0, sweepInterval: 1)
        #expect(again.mode == .sweep)
        #expect(again.lowerBound == 19)
        #expect(again.excluded == [21, 22])
    }

    @Test func resetStartsOverWithExclusions() {
        var c = ClaimCursor()
        let r = c.nextRequest(limit: 100, inFlight: [], now: 0, sweepInterval: 1)
        c.observe(r, Obs(snapshotXmin: 3, snapshotXmax: 3, lastRowId: 50, rowCount: 50), now: 0)
        c.reset()
        let again = c.nextRequest(limit: 100, inFlight: [40, 45], now: 0, sweepInterval: 1)
        #expect(again.lowerBound == 0)
        #expect(again.excluded == [40, 45])
    }

    @Test func aRewindDuringAReadIsNotUndoneByThatRead() {
        var c = ClaimCursor()
        let r = c.nextRequest(limit: 100, inFlight: [], now: 0, sweepInterval: 1)
        c.observe(r, Obs(snapshotXmin: 1, snapshotXmax: 1, lastRowId: 50, rowCount: 50), now: 0)
        #expect(c.floor == 50)
        // A sweep is in flight (row 20 excluded as in flight) when row 20's delivery fails.
        c.rewind(below: 60)
        let sweep = c.nextRequest(limit: 100, inFlight: [20], now: 0, sweepInterval: 1)
        c.rewind(below: 20)
        c.observe(sweep, Obs(snapshotXmin: 2, snapshotXmax: 2, lastRowId: 70, rowCount: 10), now: 0)
        #expect(c.floor == 19, "the read that could not see row 20 must not settle past it")
        #expect(c.sweepForced)
        let again = c.nextRequest(limit: 100, inFlight: [], now: 0, sweepInterval: 1)
        #expect(again.mode == .sweep && again.lowerBound == 19)
    }
}
