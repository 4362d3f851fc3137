import Foundation

/// How the claim loop waits once it has read everything, when the table has the notification
/// gate (see `OutboxTable.notifyUntilSQL`).
///
/// - **notified**: the replica keeps the gate at a future time, so every inserting transaction
///   sends a NOTIFY, and it sleeps until one arrives (or its poll timer). Right for a trickle:
///   nothing is read until a row commits.
/// - **polling**: rows arrive faster than one per `busyPoll`: the replica lets the gate lapse (no
///   NOTIFY, which would serialize the application's commits) and claims every `busyPoll`,
///   gathering what committed meanwhile into one claim.
///
/// `busyPoll` is `--busy-poll-ms` (default 5 ms): longer trades latency for rows per claim.
///
/// The switch follows the **rate** of claimed rows, averaged with an exponential decay over
/// `rateWindow` (0.5 s) of time, not the last few gaps: notified → polling at `1 / (1.5 ×
/// busyPoll)` (133 rows/s at 5 ms), back at `1 / (1.8 × busyPoll)` (111 rows/s). Below that rate a
/// poll reads nothing more often than not, and polling costs more than a NOTIFY per row: at 100
/// rows/s the relay's CPU per row was 0.90–1.0 ms notified against 1.1–1.2 polling, PostgreSQL's
/// 0.48–0.54 against 0.64–0.68. Rows that stop altogether switch back sooner: after as many empty
/// polls in a row as make a stop at the current rate all but certain (a chance under 1 in 100 000,
/// at least `emptyPollsBeforeIdle`: 4 at 2000 rows/s, 8 at 300, 18 at 133).
///
/// Why the long average: rows of real applications arrive at random (Poisson), not evenly. An
/// average of the last few gaps (it was 0.7 / 0.3 over gaps, then 0.9 / 0.1 over polls) drops
/// under 7.5 ms several times a second at a steady 100 rows/s — a few short gaps in a row are
/// common — and each switch costs a handful of claims that find nothing (polls, the reopening's
/// extra claim and follow-up) plus two gate statements. Measured with pgbench's random arrivals at
/// 100 rows/s: 1.38 claims per row, 0.54 of them empty, 4.5 switches a second. Over half a second
/// the rate's noise at 100 rows/s is about 10 rows/s, so 133 is three of those away. The price: a
/// jump from a trickle to a high rate polls after 0.16 s at 500 rows/s (34 ms at 2000) instead of
/// after two rows, and a burst that fell back to 100 rows/s polls on for about a second.
/// A notification is a hint either way: a missed one costs latency up to the poll timer, never a
/// row.
public struct WakeMode: Sendable, Equatable {
    public enum Mode: Sendable, Equatable { case notified, polling }

    public private(set) var mode: Mode = .notified
    public let busyPoll: Double
    public let emptyPollsBeforeIdle: Int
    /// How long one declaration keeps the gate open (database clock), and when to renew it.
    public let declaration: Double
    /// Time over which the row rate is averaged (the decay's time constant), seconds.
    public let rateWindow: Double
    var emptyPolls = 0
    /// Claimed rows per second, exponentially decayed over `rateWindow`.
    public private(set) var rate = 0.0
    var rateAt: Double?
    /// Local (monotonic) time until which the gate is known open; 0 = not declared.
    public private(set) var declaredUntil: Double = 0
    /// Declared just now with the gate closed before (after polling, at start-up, after a lapse):
    /// rows whose INSERT ran before the gate opened sent no NOTIFY, so the replica claims once
    /// more at once and the first wait is short.
    public private(set) var justReopened = false
    /// After reopening, while a transaction that had its xid before the gate opened may still
    /// run: one xid past the reopening statement's own (xids are handed out in order, and the
    /// statement took its xid after opening the gate). Such a transaction may have run its
    /// INSERT while the gate was closed — no NOTIFY at its commit — so the replica claims at
    /// short intervals (``followUpWait``: 5, 10, 20, then every 40 ms) until a claim's snapshot
    /// shows every one of them ended (its `xmin`, the oldest running xid, reaches this bound),
    /// for at most `followUpLimit` seconds.
    public private(set) var followUpUntil: UInt64?
    var followUpWait = 0.0
    var followUpEnds = 0.0
    public static let followUpLimit = 60.0

    public init(busyPoll: Double = 0.005, emptyPollsBeforeIdle: Int = 4, declaration: Double = 2.0,
                rateWindow: Double = 0.5) {
        self.busyPoll = busyPoll
        self.emptyPollsBeforeIdle = emptyPollsBeforeIdle
        self.declaration = declaration
        self.rateWindow = rateWindow
    }

    /// Notified → polling at this rate of rows (per second).
    public var pollingRate: Double { 1 / (1.5 * busyPoll) }
    /// Polling → notified under this rate.
    public var notifiedRate: Double { 1 / (1.8 * busyPoll) }

    /// A claim that found everything read returned `rows` rows at `now`.
    public mutating func observe(rows: Int, now: Double) {
        if let at = rateAt {
            rate *= exp(-max(0, now - at) / rateWindow)
        }
        rate += Double(rows) / rateWindow
        rateAt = now
        switch mode {
        case .notified:
            guard rate >= pollingRate else { return }
            mode = .polling
            declaredUntil = 0
            followUpUntil = nil
            emptyPolls = 0
        case .polling:
            emptyPolls = rows > 0 ? 0 : emptyPolls + 1
            if rate < notifiedRate || emptyPolls >= stoppedAfterEmptyPolls {
                mode = .notified
                emptyPolls = 0
                justReopened = true
                // Rows that stopped left the average high for a while: the next row must not
                // switch back to polling at once.
                rate = min(rate, notifiedRate)
            }
        }
    }

    /// Empty polls in a row after which the rows have stopped: at the current rate a run this
    /// long has a chance under 1 in 100 000 (e^-(rate × busyPoll × n)), and at least
    /// `emptyPollsBeforeIdle`. (1 in 1000 ended a steady 300 rows/s' polling every 12 s.)
    var stoppedAfterEmptyPolls: Int {
        let perPoll = rate * busyPoll
        guard perPoll > 0 else { return emptyPollsBeforeIdle }
        return max(emptyPollsBeforeIdle, Int((log(100_000) / perPoll).rounded(.up)))
    }

    /// Whether the gate must be (re)declared before sleeping: notified, and less than half a
    /// declaration left.
    public func needsDeclaration(now: Double) -> Bool {
        mode == .notified && declaredUntil - now < declaration / 2
    }

    /// The gate was set open until `now + declaration`. If it was not known open before (the
    /// first declaration, or one after polling or a lapse), rows may have run their INSERT while it
    /// was closed: ``justReopened`` asks for one more claim at once and a short first wait.
    /// `reopeningXid`: the xid the declaring statement took after opening a closed gate (see
    /// ``followUpUntil``); nil for a renewal.
    public mutating func declared(now: Double, reopeningXid: UInt64? = nil) {
        if declarationReopens(now: now) { justReopened = true }
        if let xid = reopeningXid {
            followUpUntil = xid + 1
            followUpWait = busyPoll
            followUpEnds = now + Self.followUpLimit
        }
        declaredUntil = now + declaration
    }

    /// Another replica closed the gate: it is not open whatever this replica declared.
    public mutating func gateClosed() {
        declaredUntil = 0
    }

    /// Whether the next declaration opens a closed gate (and should take an xid for the
    /// follow-up, see ``followUpUntil``).
    public func declarationReopens(now: Double) -> Bool { declaredUntil <= now }

    /// A claim ran in `snapshot`: the follow-up ends once no transaction older than its bound
    /// runs (an xid below the bound that runs now had its xid before the gate opened).
    public mutating func observe(snapshot: PGSnapshot) {
        if let until = followUpUntil, snapshot.xmin >= until { followUpUntil = nil }
    }

    /// How long to sleep in notified mode: until the poll timer, the renewal, or — just after
    /// reopening — briefly (see ``justReopened``).
    public mutating func notifiedWait(poll: Double, now: Double) -> Double {
        var wait = min(poll, max(0.001, declaredUntil - declaration / 2 - now))
        if justReopened {
            justReopened = false
            wait = min(wait, 0.05)
        }
        if followUpUntil != nil {
            if now < followUpEnds {
                wait = min(wait, followUpWait)
                followUpWait = min(2 * followUpWait, 8 * busyPoll)
            } else {
                followUpUntil = nil
            }
        }
        return wait
    }
}
