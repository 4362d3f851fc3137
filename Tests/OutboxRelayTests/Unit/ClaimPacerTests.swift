import Foundation
import OutboxRelay
import Testing

@Suite struct ClaimPacerTests {
    @Test func offClaimsAtOnceAndPollsEveryBusyPoll() {
        var p = ClaimPacer(target: 0, busyPoll: 0.005)
        #expect(p.notifiedLinger == 0 && p.busyPause == 0.005)
        for _ in 0..<40 { p.observe(oldestAge: 0.001, waited: 0) }
        #expect(p.notifiedLinger == 0 && p.busyPause == 0.005, "nothing measured moves it")
    }

    @Test func theWaitIsTheTargetLessTheMeasuredOverhead() {
        var p = ClaimPacer(target: 0.008, busyPoll: 0.005)
        #expect(abs(p.notifiedLinger - 0.004) < 1e-9, "half the target until measured")
        // A quiet machine: the oldest row is 1 ms older than the wait before its claim.
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.007 + 0.001, waited: 0.007) }
        #expect(abs(p.notifiedLinger - 0.007) < 1e-9)
        #expect(abs(p.busyPause - 0.007) < 1e-9)
        // A slow one: 6 ms of overhead. The linger shrinks to what is left; the busy poll never
        // goes under --busy-poll-ms.
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.002 + 0.006, waited: 0.002) }
        #expect(abs(p.notifiedLinger - 0.002) < 1e-9)
        #expect(p.busyPause == 0.005)
        // Claims whose rows are all older than twice the target (a path that slow): the whole
        // target is overhead, claim at once.
        for _ in 0..<ClaimPacer.samples { p.observe(ages: [0.500, 0.017], waited: 0) }
        #expect(p.notifiedLinger == 0)
        #expect(p.busyPause == 0.005)
    }

    @Test func rowsThatCommittedLateAreNotSamplesOfThePath() {
        var p = ClaimPacer(target: 0.008, busyPoll: 0.005)
        #expect(abs(p.lateRowAge - 0.016) < 1e-9)
        // Every claim carries a row of a transaction that stayed open half a second beside rows
        // that waited the 7 ms pause plus 1 ms: the pause stays 7 ms.
        for _ in 0..<ClaimPacer.samples { p.observe(ages: [0.500, 0.008, 0.004], waited: 0.007) }
        #expect(abs(p.overhead - 0.001) < 1e-9)
        #expect(abs(p.busyPause - 0.007) < 1e-9)
        // A row up to twice the target old is a sample: a path that got slower (5 ms more than
        // the pause left) is seen, and the pause shrinks to the busy poll.
        for _ in 0..<ClaimPacer.samples { p.observe(ages: [0.500, 0.013], waited: 0.007) }
        #expect(abs(p.overhead - 0.006) < 1e-9)
        #expect(p.busyPause == 0.005)
        // No ages (an empty claim) change nothing.
        p.observe(ages: [], waited: 0.007)
        #expect(abs(p.overhead - 0.006) < 1e-9)
    }

    @Test func rowsCountFromNoEarlierThanThePreviousSnapshot() {
        var p = ClaimPacer(target: 0.008, busyPoll: 0.005)
        // Rows of transactions that took 3 ms from INSERT to COMMIT, claimed after a 5 ms pause
        // 1 ms after they committed: counted from the INSERT, the path looks 4 ms slow…
        for _ in 0..<ClaimPacer.samples { p.observe(ages: [0.009, 0.004], waited: 0.005) }
        #expect(abs(p.overhead - 0.004) < 1e-9)
        #expect(p.busyPause == 0.005)
        // … but they were invisible in the previous claim's snapshot, 6 ms before this one's
        // clock: they committed within those 6 ms, and the path took at most 1 ms of them.
        for _ in 0..<ClaimPacer.samples { p.observe(ages: [0.009, 0.004], waited: 0.005, committedWithin: 0.006) }
        #expect(abs(p.overhead - 0.001) < 1e-9)
        #expect(abs(p.busyPause - 0.007) < 1e-9)
        // A bound looser than the rows' ages changes nothing; a path slower than the pause still
        // shows through it.
        for _ in 0..<ClaimPacer.samples { p.observe(ages: [0.012], waited: 0.005, committedWithin: 0.5) }
        #expect(abs(p.overhead - 0.007) < 1e-9)
        #expect(p.busyPause == 0.005)
    }

    @Test func theOverheadIsTheNineInTenQuantileOfTheLastClaims() {
        var p = ClaimPacer(target: 0.008, busyPoll: 0.005)
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.001, waited: 0) }
        #expect(ClaimPacer.samples == 64)
        // One slow claim in 64 is the tail both quantiles leave out…
        p.observe(oldestAge: 0.006, waited: 0)
        #expect(abs(p.overhead - 0.001) < 1e-9 && abs(p.notifiedOverhead - 0.001) < 1e-9)
        // … a second is not, after a notification (97 in 100: a trickle's claim is its rows)…
        p.observe(oldestAge: 0.006, waited: 0)
        #expect(abs(p.notifiedOverhead - 0.006) < 1e-9)
        #expect(abs(p.notifiedLinger - 0.002) < 1e-9)
        // … while between busy polls six are the tail (9 in 10: a busy claim's rows waited less
        // than its oldest) and a seventh is not.
        for _ in 0..<4 { p.observe(oldestAge: 0.006, waited: 0) }
        #expect(abs(p.overhead - 0.001) < 1e-9)
        p.observe(oldestAge: 0.006, waited: 0)
        #expect(abs(p.overhead - 0.006) < 1e-9)
        // Older claims leave the window: 64 quick ones later it is back.
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.001, waited: 0) }
        #expect(abs(p.overhead - 0.001) < 1e-9)
        // The broker's acknowledgement is part of the path: 1.5 ms of it on top of 1 ms.
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.001, waited: 0, acknowledgement: 0.0015) }
        #expect(abs(p.overhead - 0.0025) < 1e-9)
        #expect(abs(p.notifiedLinger - 0.0055) < 1e-9)
        // A row that committed during the wait is younger than the wait: no negative overhead.
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.002, waited: 0.007) }
        #expect(p.overhead == 0 && p.notifiedLinger == 0.008)
    }

    /// The quantiles come from samples kept in order one insertion at a time: over random
    /// samples, with repeats and evictions, they are those of the last 64 sorted afresh.
    @Test func theQuantilesAreThoseOfTheLastSamplesSorted() {
        var generator = SystemRandomNumberGenerator()
        var p = ClaimPacer(target: 0.009, busyPoll: 0.005)
        var samples: [Double] = []
        for i in 0..<1_000 {
            // Whole tenths of a millisecond up to the target: many equal samples, whose removal
            // must take one.
            let sample = Double(Int.random(in: 0...90, using: &generator)) / 10_000
            p.observe(oldestAge: sample, waited: 0)
            samples.append(sample)
            let last = samples.suffix(ClaimPacer.samples).sorted()
            guard last.count >= 4 else { continue }
            #expect(p.overhead == last[min(last.count - 1, last.count * 9 / 10)], "after \(i + 1) samples")
            #expect(p.notifiedOverhead == last[min(last.count - 1, last.count * 97 / 100)], "after \(i + 1) samples")
        }
    }

    /// A model of a notified replica at a trickle: random (Poisson) INSERTs, each visible and
    /// announced `commit` after its INSERT; a notification wakes the replica `announce` later; it
    /// lingers, then claims (a statement of `statement` seconds whose snapshot is taken halfway)
    /// and produces at the statement's end. A row that becomes visible during a statement
    /// notified meanwhile: the next claim runs at once, as the relay's does. The broker
    /// acknowledges each row `acknowledgement` after the produce, plus a random tail of mean
    /// `ackTail` (exponential); the pacer hears of the slowest of a claim's acknowledgements at the
    /// next claim, as the relay does, and of each row's latency too (unless `feedback` is off).
    /// Returns the rows' INSERT → acknowledgement p99 and the claims per row.
    private func trickle(rate: Double, commit: Double, announce: Double, statement: Double,
                         target: Double, seed: UInt64, acknowledgement: Double = 0,
                         ackTail: Double = 0, feedback: Bool = true, seconds: Double = 60) -> (p99: Double, claimsPerRow: Double) {
        var rng = SplitMix(seed: seed)
        var arrivals: [Double] = []
        var t = 0.0
        while t < seconds {
            t += -log(1 - Double.random(in: 0..<1, using: &rng)) / rate
            arrivals.append(t)
        }
        var pacer = ClaimPacer(target: target, busyPoll: 0.005)
        var latencies: [Double] = []
        var claims = 0
        var next = 0  // first row not yet claimed
        var now = 0.0
        var immediate = false
        var lastAck = acknowledgement
        var unreported: [Double] = []
        while next < arrivals.count {
            // The previous claim's rows were acknowledged meanwhile: their latencies, as the
            // relay's reports bring them (a trickle is notified: not polling).
            if feedback { for latency in unreported { pacer.observeRow(latency: latency, polling: false, rowRate: rate) } }
            unreported.removeAll()
            var waited = 0.0
            var start: Double
            if immediate {
                start = now
            } else {
                // Asleep until the first unclaimed row is announced, then the linger.
                let woken = max(now, arrivals[next] + commit + announce)
                waited = pacer.notifiedLinger
                start = woken + waited
            }
            let snapshot = start + statement / 2
            let end = start + statement
            var oldest: Double?
            var slowest = 0.0
            while next < arrivals.count, arrivals[next] + commit <= snapshot {
                oldest = oldest ?? arrivals[next]
                let ack = acknowledgement + (ackTail > 0 ? -log(1 - Double.random(in: 0..<1, using: &rng)) * ackTail : 0)
                slowest = max(slowest, ack)
                latencies.append(end + ack - arrivals[next])
                unreported.append(end + ack - arrivals[next])
                next += 1
            }
            claims += 1
            if let oldest {
                pacer.observe(oldestAge: snapshot - oldest + statement, waited: waited, acknowledgement: lastAck)
                lastAck = slowest
            }
            now = end
            immediate = next < arrivals.count && arrivals[next] + commit <= end
        }
        latencies.sort()
        return (latencies[latencies.count * 99 / 100], Double(claims) / Double(arrivals.count))
    }

    @Test func aTrickleGathersRowsPerClaimAndKeepsItsRowsWithinTheTarget() {
        // Quiet (a durable commit 0.5 ms, 0.2 ms to be woken, a 0.4 ms statement) and slow
        // (2, 1 and 3 ms): the rows' p99 stays within the target either way, and at 100 rows/s a
        // claim carries more than one row where it carried one.
        for (commit, announce, statement) in [(0.0005, 0.0002, 0.0004), (0.002, 0.001, 0.003)] {
            for rate in [20.0, 100.0, 130.0] {
                let on = trickle(rate: rate, commit: commit, announce: announce, statement: statement, target: 0.008, seed: 7)
                let off = trickle(rate: rate, commit: commit, announce: announce, statement: statement, target: 0, seed: 7)
                #expect(on.p99 <= 0.0085, "\(rate) rows/s, statement \(statement): p99 \(on.p99)")
                #expect(on.claimsPerRow < off.claimsPerRow, "\(rate) rows/s: \(on.claimsPerRow) against \(off.claimsPerRow) claims per row")
                if rate == 100, commit < 0.001 {
                    #expect(on.claimsPerRow < 0.7, "claims per row \(on.claimsPerRow)")
                    #expect(off.claimsPerRow > 0.95, "without lingering a claim per row: \(off.claimsPerRow)")
                }
            }
        }
    }

    @Test func theDefaultTargetKeepsATricklesRowsUnderTenMilliseconds() {
        // Issue 13 allows a p99 of 10 ms from COMMIT to the broker's acknowledgement; the default
        // target is 9.5 ms, which the rows' own latencies steer the wait to. In the model, quiet
        // or slow, broker included, the rows' p99 stays within a quarter millisecond of it.
        let target = RelayConfiguration(databaseURL: "postgresql://x@localhost/x", brokers: "localhost:9092")
            .effectiveLatencyTargetMillis / 1000
        #expect(target == 0.0095)
        // The broker as measured here at 100 rows/s: about 0.6 ms to acknowledge, a tail to 3.4 ms
        // at p99 (exponential, mean 0.6 ms). On the slow path (6 ms before the produce) a slower
        // broker that still fits: 1 ms, a tail to 2.4 ms at p99. And a broker with a long tail
        // (mean 1.5 ms, to 7.5 ms at p99), which the claims' overhead alone let through.
        for (commit, announce, statement, ack, tail) in [(0.0005, 0.0002, 0.0004, 0.0006, 0.0006),
                                                         (0.002, 0.001, 0.003, 0.001, 0.0003),
                                                         (0.0005, 0.0002, 0.0004, 0.0006, 0.0015)] {
            for rate in [20.0, 100.0, 130.0] {
                let p99 = trickle(rate: rate, commit: commit, announce: announce, statement: statement, target: target, seed: 11,
                                  acknowledgement: ack, ackTail: tail, seconds: 600).p99
                #expect(p99 <= target + 0.00025 && p99 < 0.010, "\(rate) rows/s, statement \(statement), tail \(tail): p99 \(p99)")
            }
        }
        // The long tail without the rows' own latencies: over the promise.
        let blind = trickle(rate: 100, commit: 0.0005, announce: 0.0002, statement: 0.0004, target: target, seed: 11,
                            acknowledgement: 0.0006, ackTail: 0.0015, feedback: false, seconds: 600).p99
        #expect(blind > 0.010, "p99 \(blind)")
    }

    /// The rows' own latencies steer the wait, once ``ClaimPacer/handOverRows`` have come: within
    /// the target they lengthen it up to the target, over it they shorten it down to its floor,
    /// and a steady path settles where one row in a hundred is over.
    @Test func theRowsSteerTheWaitToTheirP99() {
        var p = ClaimPacer(target: 0.009, busyPoll: 0.005)
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.003, waited: 0) }
        #expect(abs(p.busyPause - 0.006) < 1e-9 && abs(p.notifiedLinger - 0.006) < 1e-9)
        // The heuristic's wait until 200 rows have come…
        for _ in 0..<(ClaimPacer.handOverRows - 1) { p.observeRow(latency: 0.004, polling: true, rowRate: 500) }
        #expect(abs(p.busyPause - 0.006) < 1e-9 && p.steeredPause == nil)
        // … then rows well within the target, 500 a second, lengthen it to the whole target, and
        // no further. The linger, whose rows have not come, stays as it was.
        for _ in 0..<100_000 { p.observeRow(latency: 0.004, polling: true, rowRate: 500) }
        #expect(abs(p.busyPause - 0.009) < 1e-9)
        #expect(abs(p.notifiedLinger - 0.006) < 1e-9)
        // Every row over it: the busy pause shrinks to the busy poll, and no further, so it
        // lengthens again with the first row within. (Polling more often than that did not
        // bring the rows sooner on a busy machine: the broker's acknowledgements were what was
        // slow, and more ProduceRequests made them slower.)
        for _ in 0..<1_000 { p.observeRow(latency: 0.012, polling: true, rowRate: 500) }
        #expect(abs(p.busyPause - 0.005) < 1e-9)
        p.observeRow(latency: 0.004, polling: true, rowRate: 500)
        #expect(p.busyPause > 0.005)
        // The heuristic no longer moves it.
        for _ in 0..<ClaimPacer.samples { p.observe(oldestAge: 0.001, waited: 0) }
        #expect(p.busyPause < 0.0051)
        // Notified, the linger's floor is none.
        for _ in 0..<1_000 { p.observeRow(latency: 0.012, polling: false, rowRate: 500) }
        #expect(p.notifiedLinger == 0)
        // Off: nothing moves it.
        var off = ClaimPacer(target: 0, busyPoll: 0.005)
        for _ in 0..<1_000 { off.observeRow(latency: 1, polling: true, rowRate: 0) }
        #expect(off.busyPause == 0.005 && off.steeredPause == nil)

        // A closed loop: rows arrive evenly during a pause and wait out the rest of it, then
        // 0.5 ms of path and an exponential broker tail of mean 0.8 ms (3.7 ms at p99). The
        // claims' overhead alone leaves a pause of 7.7 ms, at which about 4 rows in a hundred are
        // over the target; the rows shorten it until one in a hundred is (about 6.5 ms).
        var rng = SplitMix(seed: 5)
        var loop = ClaimPacer(target: 0.009, busyPoll: 0.005)
        var over = 0, rows = 0
        for claim in 0..<40_000 {
            let pause = loop.busyPause
            loop.observe(oldestAge: pause + 0.0005, waited: pause, acknowledgement: 0.0008)
            for _ in 0..<4 {
                let tail = -log(1 - Double.random(in: 0..<1, using: &rng)) * 0.0008
                let latency = pause * Double.random(in: 0..<1, using: &rng) + 0.0005 + tail
                loop.observeRow(latency: latency, polling: true, rowRate: 4 / (pause + 0.001))
                if claim >= 10_000 {
                    rows += 1
                    if latency > 0.009 { over += 1 }
                }
            }
        }
        #expect(loop.busyPause > 0.0055 && loop.busyPause < 0.0075, "pause \(loop.busyPause)")
        let share = Double(over) / Double(rows)
        #expect(share > 0.007 && share < 0.013, "share over the target \(share)")
    }
}
