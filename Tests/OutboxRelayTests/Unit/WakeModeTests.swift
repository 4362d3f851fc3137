import Foundation
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

    /// Rows `every` seconds apart from `from` on, observed one claim each, until `until`.
    private func feed(_ m: inout WakeMode, every: Double, rows: Int = 1, from: Double, until: Double) {
        var t = from
        while t < until {
            m.observe(rows: rows, now: t)
            t += every
        }
    }

    @Test func rowsFasterThanTheBusyPollSwitchToPollingAndQuietSwitchesBack() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        m.declared(now: 0)
        // 500 rows/s: each notification would serialize a commit. Not two rows 2 ms apart (a
        // random trickle has those all the time), but the rate over the last half second.
        feed(&m, every: 0.002, from: 0.002, until: 0.1)
        #expect(m.mode == .notified, "0.1 s of 500 rows/s averages \(Int(m.rate)) rows/s")
        feed(&m, every: 0.002, from: 0.1, until: 0.2)
        #expect(m.mode == .polling, "0.2 s of 500 rows/s averages \(Int(m.rate)) rows/s")
        #expect(!m.needsDeclaration(now: 0.21), "a polling replica lets the gate lapse")
        feed(&m, every: 0.005, rows: 3, from: 0.2, until: 1.0)
        // The rows stop: at about 500 rows/s (2.5 a poll) five empty polls in a row are a stop
        // (a chance of 1 in 270 000 at that rate).
        for i in 0..<4 { m.observe(rows: 0, now: 1.0 + Double(i) * 0.005) }
        #expect(m.mode == .polling, "four empty polls are not yet idle at this rate")
        m.observe(rows: 0, now: 1.02)
        #expect(m.mode == .notified && m.justReopened)
        #expect(m.needsDeclaration(now: 1.02))
        m.declared(now: 1.02)
        #expect(m.notifiedWait(poll: 1, now: 1.02) <= 0.05, "right after reopening, the first wait is short")
        #expect(m.notifiedWait(poll: 1, now: 1.02) > 0.5, "then the poll timer")
        m.observe(rows: 1, now: 1.1)
        #expect(m.mode == .notified, "the average the stopped rows left behind does not switch a single row to polling")
    }

    /// Found by measuring with random arrivals (pgbench's): at a steady 100 rows/s the average of
    /// the last few gaps fell under 7.5 ms several times a second, and every switch to polling and
    /// back cost empty claims and two gate statements — 1.38 claims per row, 0.54 of them empty.
    @Test func randomArrivalsAtATrickleDoNotFlapBetweenModes() {
        var rng = SplitMix(seed: 13)
        for rate in [50.0, 100.0] {
            var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
            var t = 0.0, switches = 0, last = m.mode
            while t < 60 {
                t += rng.exponential(mean: 1 / rate)
                m.observe(rows: 1, now: t + 0.001)  // a notified claim, a millisecond after the commit
                if m.mode != last { switches += 1; last = m.mode }
            }
            // The average of the last few gaps switched 483 times here (94 at 50 rows/s, 49 at 300).
            #expect(switches <= 2, "\(switches) switches in 60 s of random arrivals at \(Int(rate)) rows/s")
        }
        // Random arrivals well above the switching rate, polled every 5 ms: polling throughout.
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        var t = 0.0, next = rng.exponential(mean: 1 / 300.0), switches = 0, last = m.mode
        while t < 60 {
            t += m.mode == .polling ? 0.005 : 0.001
            var rows = 0
            while next <= t { rows += 1; next += rng.exponential(mean: 1 / 300.0) }
            if m.mode == .notified && rows == 0 { continue }
            m.observe(rows: rows, now: t)
            if m.mode != last { switches += 1; last = m.mode }
        }
        #expect(m.mode == .polling)
        #expect(switches <= 2, "\(switches) switches in 60 s of random arrivals at 300 rows/s")
    }

    /// `--busy-poll-ms 20`: the same rules, scaled. 100 rows/s (a row every 10 ms), which keeps
    /// the default (5 ms) notified, is polled every 20 ms, two rows a claim, with the gate shut;
    /// 17 rows/s (a row every third poll) goes back to notifications.
    @Test func aLongerBusyPollPollsLowerRatesAndGathersMoreRowsPerClaim() {
        var fast = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        var slow = WakeMode(busyPoll: 0.02, emptyPollsBeforeIdle: 4, declaration: 2)
        fast.declared(now: 0)
        slow.declared(now: 0)
        feed(&fast, every: 0.01, from: 0.01, until: 2)
        feed(&slow, every: 0.01, from: 0.01, until: 0.3)
        #expect(fast.mode == .notified, "100 rows/s is a trickle for a 5 ms busy poll")
        #expect(slow.mode == .polling, "and above the 33 rows/s where a 20 ms busy poll starts polling")
        #expect(!slow.needsDeclaration(now: 0.3), "polling lets the gate lapse")
        feed(&slow, every: 0.02, rows: 2, from: 0.3, until: 1.3)
        #expect(slow.mode == .polling, "two rows a poll: it keeps polling")
        var polls = 0
        while slow.mode == .polling, polls < 200 {
            polls += 1
            slow.observe(rows: polls % 3 == 0 ? 1 : 0, now: 1.3 + Double(polls) * 0.02)
        }
        #expect(slow.mode == .notified, "17 rows/s is under 1 / (1.8 × 20 ms): back to notifications")
        #expect(polls > 3 && polls <= 75, "took \(polls) polls")
    }

    /// Found by measuring: after a burst had switched it to polling, a relay kept polling every
    /// 5 ms at a steady 100 rows/s (a row every other poll is never four empty polls in a row),
    /// which cost the relay and PostgreSQL about a fifth more per row than notifications.
    @Test func aSteadyRateBelowTheSwitchingRateGoesBackToNotifications() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        feed(&m, every: 0.005, rows: 2, from: 0, until: 0.5)
        #expect(m.mode == .polling, "400 rows/s polls")
        var polls = 0
        // 100 rows/s, a poll every 5 ms: every other poll reads one row.
        while m.mode == .polling, polls < 1000 {
            polls += 1
            m.observe(rows: polls % 2, now: 0.5 + Double(polls) * 0.005)
        }
        #expect(m.mode == .notified, "still polling after \(polls) polls at 100 rows/s")
        #expect(polls < 300, "took \(polls) polls (about a second: the burst's average decays)")
        let back = 0.5 + Double(polls) * 0.005
        feed(&m, every: 0.01, from: back + 0.01, until: back + 5)
        #expect(m.mode == .notified, "and stays notified at 100 rows/s")
        // 200 rows/s: every poll reads a row — polling is cheaper than a NOTIFY per row.
        feed(&m, every: 0.005, from: back + 5, until: back + 10)
        #expect(m.mode == .polling)
    }

    @Test func aBurstOfRowsKeepsPollingWhileAnyPollFindsRows() {
        var m = WakeMode(busyPoll: 0.005, emptyPollsBeforeIdle: 4, declaration: 2)
        feed(&m, every: 0.005, rows: 2, from: 0, until: 0.5)
        #expect(m.mode == .polling)
        for i in 0..<400 {
            m.observe(rows: i % 3 == 0 ? 2 : 0, now: 0.5 + Double(i) * 0.005)
        }
        #expect(m.mode == .polling, "empty polls are counted in a row, not in total (133 rows/s)")
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
        m.observe(rows: 100, now: 100.001)
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

extension SplitMix {
    /// An exponentially distributed gap with this mean (Poisson arrivals).
    mutating func exponential(mean: Double) -> Double {
        let u = (Double(next() >> 11) + 0.5) / Double(1 << 53)
        return -mean * log(u)
    }
}
