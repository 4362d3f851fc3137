/// How long rows have been awaited with no delivery succeeding: what the relay's watchdog
/// re-creates a wedged producer on (pure; the relay passes the monotonic clock).
///
/// Silence counts only while something is awaited — a delivery report or a retry. A replica
/// whose window is full of acknowledged rows it cannot delete (the database unreachable) awaits
/// nothing from the producer; counting that time as silence made the watchdog fire the moment
/// production resumed, and the re-creation purged messages in flight that had landed: they were
/// sent twice (faults_network's pg-long and three-replicas cases: duplicates past the window).
public struct DeliveryWatchdog: Sendable, Equatable {
    /// Start of the current silence; nil while nothing is awaited.
    public private(set) var silentSince: Double?

    public init() {}

    /// What the relay awaits now (observed at each heartbeat).
    public mutating func observe(awaiting: Bool, now: Double) {
        if !awaiting {
            silentSince = nil
        } else if silentSince == nil {
            silentSince = now
        }
    }

    /// A delivery succeeded (or a new producer started): silence, if any, starts over.
    public mutating func restart(now: Double) {
        if silentSince != nil { silentSince = now }
    }

    /// Seconds awaited without a success (0 while nothing is awaited).
    public func silence(now: Double) -> Double {
        silentSince.map { max(0, now - $0) } ?? 0
    }
}
