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
    public mutating func declared(now: Double) {
        if declaredUntil <= now { justReopened = true }
        declaredUntil = now + declaration
    }

    /// How long to sleep in notified mode: until the poll timer, the renewal, or — just after
    /// reopening — briefly (see ``justReopened``).
    public mutating func notifiedWait(poll: Double, now: Double) -> Double {
        var wait = min(poll, max(0.001, declaredUntil - declaration / 2 - now))
        if justReopened {
            justReopened = false
            wait = min(wait, 0.05)
        }
        return wait
    }
}
