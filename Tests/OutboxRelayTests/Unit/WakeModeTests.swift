import OutboxRelay
import Testing

@Suite struct WakeModeTests {
    @Test func aTrickleStaysNotifiedAndRenewsTheGateHalfwayThrough() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        #expect(m.mode == .notified && m.needsDeclaration(now: 0))
        m.declared(now: 0)
        #expect(!m.needsDeclaration(now: 0.9))
        #expect(m.needsDeclaration(now: 1.1), "renewed once half the declaration is left")
        // One row every 20 ms (50 rows/s): notifications are cheap, polling would not be.
        for i in 1...50 { m.observe(rows: 1, now: Double(i) * 0.02) }
        #expect(m.mode == .notified)
        #expect(m.notifiedWait(poll: 1, now: 0.5) <= 0.5 + 1e-9, "wakes for the renewal at the latest")
    }

    @Test func rowsFasterThanTheBusyPollSwitchToPollingAndQuietSwitchesBack() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        m.declared(now: 0)
        // Rows every 2 ms (500 rows/s): each notification would serialize a commit.
        m.observe(rows: 1, now: 0.002)
        m.observe(rows: 1, now: 0.004)
        #expect(m.mode == .polling)
        #expect(!m.needsDeclaration(now: 0.01), "a polling replica lets the gate lapse")
        for i in 0..<3 { m.observe(rows: 0, now: 0.01 + Double(i) * 0.005) }
        #expect(m.mode == .polling, "three empty polls are not yet idle")
        m.observe(rows: 0, now: 0.03)
        #expect(m.mode == .notified && m.justReopened)
        #expect(m.needsDeclaration(now: 0.03))
        m.declared(now: 0.03)
        #expect(m.notifiedWait(poll: 1, now: 0.03) <= 0.05, "right after reopening, the first wait is short")
        #expect(m.notifiedWait(poll: 1, now: 0.03) > 0.5, "then the poll timer")
    }

    /// `--busy-poll-ms 20`: the same rules, scaled. 100 rows/s (a row every 10 ms), which keeps
    /// the default (5 ms) notified, is polled every 20 ms, two rows a claim, with the gate shut;
    /// 17 rows/s (a row every third poll) goes back to notifications.
    @Test func aLongerBusyPollPollsLowerRatesAndGathersMoreRowsPerClaim() {
        var fast = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        var slow = WakeMode(busyPoll: 0.02, emptyPollsBeforeIdle: 4, declaration: 2)
        fast.declared(now: 0)
        slow.declared(now: 0)
        for i in 1...10 {
            fast.observe(rows: 1, now: Double(i) * 0.01)
            slow.observe(rows: 1, now: Double(i) * 0.01)
        }
        #expect(fast.mode == .notified, "100 rows/s is a trickle for a 5 ms busy poll")
        #expect(slow.mode == .polling, "and above the 33 rows/s where a 20 ms busy poll starts polling")
        #expect(!slow.needsDeclaration(now: 0.2), "polling lets the gate lapse")
        for i in 1...50 { slow.observe(rows: 2, now: 0.1 + Double(i) * 0.02) }
        #expect(slow.mode == .polling, "two rows a poll: it keeps polling")
        for i in 1...50 {
            slow.observe(rows: i % 3 == 0 ? 1 : 0, now: 1.1 + Double(i) * 0.02)
            if i < 3 { #expect(slow.mode == .polling) }
        }
        #expect(slow.mode == .notified, "17 rows/s (never four empty polls) is under 1 / (1.8 × 20 ms): back to notifications")
    }

    /// Found by a flaky test: a row whose INSERT ran between the relay's first claim and its
    /// first declaration sent no NOTIFY and waited for the poll timer (10 minutes in that test).
    @Test func theFirstDeclarationAndOnlyADeclarationOfAClosedGateAskForAnotherClaim() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        #expect(!m.justReopened)
        m.declared(now: 0)
        #expect(m.justReopened, "the gate was closed until now: claim once more")
        #expect(m.notifiedWait(poll: 600, now: 0) <= 0.05, "and wait briefly first")
        #expect(!m.justReopened)
        m.declared(now: 1.1)
        #expect(!m.justReopened, "a renewal of an open gate needs no extra claim")
        m.declared(now: 10)
        #expect(m.justReopened, "a lapsed gate does")
    }

    /// Found by measuring: after a burst had switched it to polling, a relay kept polling every
    /// 5 ms at a steady 100 rows/s (a row every other poll is never four empty polls in a row),
    /// which cost the relay and PostgreSQL about a fifth more per row than notifications.
    @Test func aSteadyRateBelowTheSwitchingRateGoesBackToNotifications() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        m.observe(rows: 5, now: 0.001)
        m.observe(rows: 5, now: 0.003)
        #expect(m.mode == .polling)
        var polls = 0
        // 100 rows/s, a poll every 5 ms: every other poll reads one row.
        while m.mode == .polling, polls < 200 {
            polls += 1
            m.observe(rows: polls % 2, now: 0.01 + Double(polls) * 0.005)
        }
        #expect(m.mode == .notified, "still polling after \(polls) polls at 100 rows/s")
        #expect(polls < 40, "took \(polls) polls")
        // 200 rows/s: every poll reads a row — polling is cheaper than a NOTIFY per row.
        m.observe(rows: 1, now: 1.000)
        m.observe(rows: 1, now: 1.005)
        #expect(m.mode == .polling)
        for i in 0..<400 { m.observe(rows: 1, now: 1.01 + Double(i) * 0.005) }
        #expect(m.mode == .polling)
    }

    @Test func aBurstOfRowsKeepsPollingWhileAnyPollFindsRows() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        m.observe(rows: 5, now: 0.001)
        m.observe(rows: 5, now: 0.003)
        #expect(m.mode == .polling)
        for i in 0..<100 {
            m.observe(rows: i % 3 == 0 ? 2 : 0, now: 0.01 + Double(i) * 0.005)
        }
        #expect(m.mode == .polling, "empty polls are counted in a row, not in total")
    }

    /// A transaction that ran its INSERT while the gate was closed sent no NOTIFY, and may commit
    /// long after the reopening's extra claim: the replica follows up until every transaction
    /// that had its xid before the gate opened has ended (found by the concurrent-writers bench:
    /// long transactions' rows waited 200 ms and more for an unrelated notification).
    @Test func aReopeningFollowsUpUntilEveryOlderTransactionHasEnded() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        #expect(m.declarationReopens(now: 0))
        m.declared(now: 0, reopeningXid: 100)
        #expect(m.followUpUntil == 101)
        #expect(m.notifiedWait(poll: 600, now: 0) <= 0.005 + 1e-9)
        // xid 90 still runs: short waits, doubling to 40 ms.
        m.observe(snapshot: PGSnapshot(xmin: 90, xmax: 105, xip: [90]))
        let waits = (0..<6).map { m.notifiedWait(poll: 600, now: 0.1 + Double($0) * 0.01) }
        #expect(waits.map { ($0 * 1000).rounded() } == [10, 20, 40, 40, 40, 40])
        // Oldest running xid 101: every transaction older than the gate has ended.
        m.observe(snapshot: PGSnapshot(xmin: 101, xmax: 110, xip: [101]))
        #expect(m.followUpUntil == nil)
        #expect(m.notifiedWait(poll: 600, now: 0.5) > 0.4, "back to notifications and the renewal")
        // A renewal of the open gate does not follow up.
        #expect(!m.declarationReopens(now: 1.1))
        m.declared(now: 1.1)
        #expect(m.followUpUntil == nil)
    }

    @Test func aFollowUpEndsAfterItsLimitAndWhenPolling() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 200)
        m.declared(now: 0, reopeningXid: 5)
        m.observe(snapshot: PGSnapshot(xmin: 3, xmax: 9, xip: [3]))
        #expect(m.notifiedWait(poll: 600, now: 1) <= 0.05)
        #expect(m.notifiedWait(poll: 600, now: WakeMode.followUpLimit + 1) > 1, "an endless transaction is not followed for ever")
        #expect(m.followUpUntil == nil)
        m.declared(now: 100, reopeningXid: 7)
        m.observe(rows: 1, now: 100.001)
        m.observe(rows: 1, now: 100.002)
        #expect(m.mode == .polling && m.followUpUntil == nil, "polling reads everything anyway")
    }

    @Test func aGateClosedByAnotherReplicaIsReopenedWithAFollowUp() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        m.declared(now: 0, reopeningXid: 10)
        m.observe(snapshot: PGSnapshot(xmin: 11, xmax: 12))
        _ = m.notifiedWait(poll: 1, now: 0)
        #expect(!m.needsDeclaration(now: 0.2) && !m.declarationReopens(now: 0.2))
        m.gateClosed()
        #expect(m.needsDeclaration(now: 0.2) && m.declarationReopens(now: 0.2))
        m.declared(now: 0.2, reopeningXid: 20)
        #expect(m.justReopened && m.followUpUntil == 21)
    }
}
