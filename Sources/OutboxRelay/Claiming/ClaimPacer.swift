/// How long a caught-up replica lets rows wait for company before it claims them: the relay's
/// `linger.ms`. Every claim cycle — a statement and its reply, a ProduceRequest per partition and
/// its response, a delivery report — costs the relay and the database about the same whether it
/// carries one row or five, so rows gathered per claim are what makes a steady stream cheap. The
/// wait is bounded by a **latency target** for the rows themselves, and spends on gathering only
/// what the rest of the path leaves of it:
///
/// - notified (a trickle): after the notification that wakes it, the replica lingers
///   ``notifiedLinger`` before claiming; notifications meanwhile wake nobody, and their rows come
///   in the same claim;
/// - polling (rows faster than the busy poll): it pauses ``busyPause`` between polls, never less
///   than `--busy-poll-ms`.
///
/// Each starts as `target − overhead` (a heuristic), and once ``handOverRows`` rows claimed so
/// have been acknowledged, the rows' own COMMIT → acknowledgement latencies steer it so that one
/// in a hundred is over the target (``observeRow(latency:polling:rowRate:)``). `overhead` is measured:
/// for each claim of the read window,
/// the age of its oldest row when claimed (database clock: the claim's `clock_timestamp()` less
/// the row's `created_at`), plus the claim statement's time on this host (its reply and decoding
/// come before the produce), less the linger or pause it waited — the time the row spent
/// committing, being announced, in the claim cycle before this one and in this one's statement —
/// plus the broker's time to acknowledge: the longest produce → acknowledgement latency among the
/// messages acknowledged since the previous claim (``AckLatency``, timed on librdkafka's broker
/// thread). The target is to the acknowledgement, as the promise is (COMMIT → acknowledgement
/// p99 ≤ 10 ms). (Until it counted, the target was met at the produce call: at 500 rows/s and a
/// 9 ms target COMMIT → Kafka CreateTime p99 was 8.5 ms and COMMIT → acknowledgement 10.6 ms.)
/// The overhead taken is a high quantile of the last 64 claims, so a machine that gets slower
/// shortens the wait by itself, down to claiming at once: the 9-in-10 for a busy poll, whose claims
/// carry several rows each (the sample is the claim's oldest row, the others waited less), and
/// the 97-in-100 after a notification, where a trickle's claim carries one or two rows and its
/// oldest is most of its rows — the rows' p99 is then the claims' p99, near enough. (With the
/// 9-in-10 there too, COMMIT → acknowledgement p99 at 100 rows/s was 9.8–10.6 ms against a 9 ms
/// target, while at 500 rows/s 9.5–9.6.) A claim's sample is its oldest row that
/// is not older than ``lateRowAge`` (twice the target): a row older than that belongs to a
/// transaction that committed long after its INSERT (one that stayed open, a row held back for a
/// retry), and its age is the application's, not the path's. Only a claim whose rows are all that
/// old — a path slower than twice the target — counts the whole target. (Before, the oldest row
/// counted whatever its age: with 8 writers of whom one transaction in twenty stayed open
/// 0.3–1.8 s, a fifth of the claims at 1000 rows/s carried such a row and the quantile held the
/// pause at the busy poll — more claims for no row's sake.) Rows re-read by a sweep (after a
/// rewind, a retry, a lost connection) are not samples: their age says nothing about the path.
///
/// The latency promised is from COMMIT, and a row's age counts from its INSERT: in a transaction
/// of several statements the time between the two is the application's too. A window's first
/// page reads only rows whose transactions were invisible in the previous claim's snapshot, so
/// each committed after that snapshot was taken: its age from its commit is at most the time
/// since (`committedWithin`), whatever its INSERT's age. The relay passes that bound, and a
/// row's sample is the smaller of the two. (Before, at 1000 rows/s from 8 writers whose
/// transactions take 1–2 ms between their INSERTs and COMMIT, that time counted as the path's,
/// and the pause was a millisecond shorter than the target left.)
///
/// `target` 0 turns it off: claim at once on a notification, poll every busy poll.
public struct ClaimPacer: Sendable, Equatable {
    /// The latency target, seconds (`--latency-target-ms`); 0: off.
    public let target: Double
    /// The shortest pause between busy polls, seconds (`--busy-poll-ms`).
    public let busyPoll: Double
    /// Claims the overhead is taken over.
    public static let samples = 64
    var recent: [Double] = []
    var next = 0
    /// `recent`, sorted: each claim moves one sample in it (sorting all of them per claim was 3 %
    /// of the claim thread at 500 rows/s).
    private var sorted: [Double] = []
    /// The path's overhead between busy polls (9-in-10 quantile of ``samples`` claims), seconds.
    public private(set) var overhead: Double
    /// The path's overhead after a notification (97-in-100 quantile), seconds.
    public private(set) var notifiedOverhead: Double

    public init(target: Double, busyPoll: Double) {
        self.target = max(0, target)
        self.busyPoll = busyPoll
        // Until a few claims have measured it: half the target (a trickle's first rows wait half
        // of it, a first busy poll is the busy poll).
        overhead = self.target / 2
        notifiedOverhead = overhead
    }

    /// The waits the rows' own latencies steer (``observeRow(latency:polling:rowRate:)``), seconds;
    /// nil until ``handOverRows`` rows claimed so have reported, the claims' overhead until then.
    public private(set) var steeredPause: Double?
    public private(set) var steeredLinger: Double?
    private var pollingRows = 0
    private var notifiedRows = 0
    /// Rows a wait's heuristic (the claims' overhead) serves before the rows steer it.
    public static let handOverRows = 200

    /// After a notification, how much longer to wait before claiming.
    public var notifiedLinger: Double { target > 0 ? steeredLinger ?? max(0, target - notifiedOverhead) : 0 }

    /// Between busy polls: the busy poll, lengthened up to the target.
    public var busyPause: Double { target > 0 ? steeredPause ?? max(busyPoll, target - overhead) : busyPoll }

    /// A row of the read window was acknowledged `latency` seconds after it committed (an upper
    /// bound: see Relay.pathStart), claimed while polling or after a notification, while rows
    /// were claimed at `rowRate` per second (``WakeMode/rate``, the average the wake mode
    /// follows). The claims' overhead is a heuristic for the rows' p99, and how far it is off
    /// moves with the machine: at a 9 ms target it read 9.4–9.7 ms when the machine was calm and
    /// 10.7 ms when it was busy. So it only starts a wait off; from the ``handOverRows``th row
    /// claimed in that mode the rows steer it to the target: each row over it shortens the wait
    /// by 99 steps, each row within lengthens it by one, and the wait settles where one row in a
    /// hundred is over (a stochastic-approximation quantile that moves the control instead of an
    /// estimate). A step is a fiftieth of the target, less above ``stepRate`` rows per second.
    /// The wait stays between the target and its floor: the busy poll, or no linger. (Polling
    /// more often than the busy poll brought no row sooner on a busy machine: the broker's
    /// acknowledgements were the slow part, and more ProduceRequests made them slower. Adding a
    /// correction to the heuristic's wait instead left the heuristic's jumps in it — its quantile
    /// of 64 claims moves by a millisecond when one slow claim comes or goes — and the rows' p99
    /// followed the longest waits; steering the p99 of the last 512 rows swung from 7.4 to
    /// 10.7 ms from one window to the next at 500 rows/s. Both bought a lower p99 with more
    /// claims.)
    public mutating func observeRow(latency: Double, polling: Bool, rowRate: Double) {
        guard target > 0 else { return }
        let step = target / 50 * min(1, Self.stepRate / max(rowRate, 1))
        let move = latency > target ? -step * Self.rowQuantile : step * (1 - Self.rowQuantile)
        if polling {
            pollingRows += 1
            guard pollingRows >= Self.handOverRows else { return }
            steeredPause = min(target, max(busyPoll, busyPause + move))
        } else {
            notifiedRows += 1
            guard notifiedRows >= Self.handOverRows else { return }
            steeredLinger = min(target, max(0, notifiedLinger + move))
        }
    }

    /// The share of rows the target is for: COMMIT → acknowledgement p99.
    public static let rowQuantile = 0.99
    /// Above this many rows per second a step shrinks in proportion, so a wait moves no faster
    /// in time with more rows and averages more of them: at 500 rows/s a fiftieth of the target
    /// per row moved the wait by a millisecond from one second to the next.
    public static let stepRate = 100.0

    /// Rows older than this when claimed committed late (see the type's notes): not samples.
    public var lateRowAge: Double { 2 * target }

    /// A claim of the read window found rows of these ages (seconds since each INSERT, database
    /// clock, plus the statement's time), having waited `waited` seconds (linger or pause) before
    /// it ran. Every row committed at most `committedWithin` seconds (same clock, statement
    /// included) before, when known: no age counts more. Its sample is the oldest age not over
    /// ``lateRowAge``, or the oldest if all are; to it comes `acknowledgement`, the broker's
    /// produce → acknowledgement time lately (seconds).
    public mutating func observe(ages: some Sequence<Double>, waited: Double, committedWithin: Double? = nil,
                                 acknowledgement: Double = 0) {
        guard target > 0 else { return }
        var onTime: Double?
        var oldest: Double?
        let bound = committedWithin ?? .infinity
        for insertAge in ages {
            let age = min(insertAge, bound)
            oldest = max(oldest ?? age, age)
            if age <= lateRowAge { onTime = max(onTime ?? age, age) }
        }
        guard let sample = onTime ?? oldest else { return }
        observe(oldestAge: sample, waited: waited, acknowledgement: acknowledgement)
    }

    /// A claim of the read window found rows, the oldest of its samples `oldestAge` seconds after
    /// its INSERT, having waited `waited` seconds before it ran, its rows then acknowledged about
    /// `acknowledgement` seconds after the produce; older than ``lateRowAge``: the whole target.
    public mutating func observe(oldestAge: Double, waited: Double, acknowledgement: Double = 0) {
        guard target > 0 else { return }
        let sample = oldestAge > lateRowAge ? target : min(target, max(0, oldestAge - waited) + max(0, acknowledgement))
        if recent.count < Self.samples {
            recent.append(sample)
        } else {
            sorted.remove(at: Self.firstIndex(notBelow: recent[next], in: sorted))
            recent[next] = sample
        }
        sorted.insert(sample, at: Self.firstIndex(notBelow: sample, in: sorted))
        next = (next + 1) % Self.samples
        guard recent.count >= 4 else { return }
        overhead = sorted[min(sorted.count - 1, sorted.count * 9 / 10)]
        notifiedOverhead = sorted[min(sorted.count - 1, sorted.count * 97 / 100)]
    }

    /// The first index of `sorted` (ascending) whose value is not below `value`.
    private static func firstIndex(notBelow value: Double, in sorted: [Double]) -> Int {
        var low = 0, high = sorted.count
        while low < high {
            let mid = (low + high) / 2
            if sorted[mid] < value { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
