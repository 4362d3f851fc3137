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
/// Rows arriving at intervals (averaged) under `1.5 × busyPoll` (133 rows/s at 5 ms) switch
/// notified → polling. Back to notified: `emptyPollsBeforeIdle` claims in a row that read nothing
/// (the rows stopped), or a rate under `1 / (1.8 × busyPoll)` (111 rows/s) averaged over the
/// last polls. Below that rate a poll reads nothing more often than not, and polling costs more
/// than a NOTIFY per row: at 100 rows/s the relay's CPU per row was 0.90–1.0 ms notified against
/// 1.1–1.2 polling, PostgreSQL's 0.48–0.54 against 0.64–0.68. (Before the rate rule a relay that
/// had once switched to polling kept polling every 5 ms at 100 rows/s — a row every other poll
/// is never four empty polls in a row.) A notification is a hint either way: a missed one costs
/// latency up to the poll timer, never a row.
public struct WakeMode: Sendable, Equatable {
    public enum Mode: Sendable, Equatable { case notified, polling }

    public private(set) var mode: Mode = .notified
    public let busyPoll: Double
    public let emptyPollsBeforeIdle: Int
    /// How long one declaration keeps the gate open (database clock), and when to renew it.
    public let declaration: Double
    var emptyPolls = 0
    var lastRowsAt: Double?
    var interval: Double?
    /// Polling: averages of rows per claim and of seconds between claims (their ratio is the rate).
    var pollRows = 0.0
    var pollSeconds = 0.0
    var lastPollAt: Double?
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

    public init(busyPoll: Double = 0.005, emptyPollsBeforeIdle: Int = 4, declaration: Double = 2.0) {
        self.busyPoll = busyPoll
        self.emptyPollsBeforeIdle = emptyPollsBeforeIdle
        self.declaration = declaration
    }

    /// A claim that found everything read returned `rows` rows at `now`.
    public mutating func observe(rows: Int, now: Double) {
        if mode == .polling {
            emptyPolls = rows > 0 ? 0 : emptyPolls + 1
            if let last = lastPollAt {
                pollRows = 0.9 * pollRows + 0.1 * Double(rows)
                pollSeconds = 0.9 * pollSeconds + 0.1 * (now - last)
            }
            lastPollAt = now
            if emptyPolls >= emptyPollsBeforeIdle || pollRows < pollSeconds / (1.8 * busyPoll) {
                mode = .notified
                emptyPolls = 0
                justReopened = true
            }
            return
        }
        guard rows > 0 else { return }
        if let last = lastRowsAt {
            let gap = now - last
            interval = interval.map { 0.7 * $0 + 0.3 * gap } ?? gap
            if let i = interval, i < 1.5 * busyPoll {
                mode = .polling
                declaredUntil = 0
                followUpUntil = nil
                // The rate that switched it, as if measured over polls of busyPoll.
                pollRows = busyPoll / max(i, 1e-6)
                pollSeconds = busyPoll
                lastPollAt = now
                emptyPolls = 0
                interval = nil
                lastRowsAt = nil
                return
            }
        }
        lastRowsAt = now
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
