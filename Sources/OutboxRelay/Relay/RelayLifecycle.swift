/// The relay's lifecycle as a pure state machine: which steps may run now, and the order of the
/// shutdown steps. The `Relay` actor asks it before acting and reports each step's end.
///
/// ```
/// running ⇄ recreatingProducer
///    │ stop (waits for a re-creation in progress to end)
///    ▼
/// draining ── outstanding reports awaited (deadline), the rest purged and its reports taken
///    ▼
/// closingProducer ── loops stopped, deletes finished, the producer destroyed: nothing more can be sent
///    ▼
/// leaving ── leases released, so another replica may take the shards
///    ▼
/// stopped
/// ```
///
/// Two holes this closes by construction: a re-creation cannot start once shutdown began (so it
/// never races the drain for the same wake-up), and leases are released only after the producer
/// is closed (so a new owner never starts while this instance still sends).
struct RelayLifecycle: Sendable, Equatable {
    enum State: Sendable, Equatable {
        case running, recreatingProducer, draining, closingProducer, leaving, stopped
    }

    private(set) var state: State = .running
    /// A re-creation was asked for and its task not yet started.
    private(set) var recreationScheduled = false

    /// Rows may be claimed and produced.
    var producing: Bool { state == .running }

    /// The loops (reports, deletes, leases) have been told to finish.
    var terminated: Bool {
        switch state {
        case .closingProducer, .leaving, .stopped: return true
        case .running, .recreatingProducer, .draining: return false
        }
    }

    /// A re-creation is wanted (fatal error, fencing storm, watchdog). True: start a task for it.
    mutating func requestRecreation() -> Bool {
        guard state == .running, !recreationScheduled else { return false }
        recreationScheduled = true
        return true
    }

    /// The re-creation task runs. True: go ahead (purge, replace); false: shutdown began first.
    mutating func recreationStarts() -> Bool {
        recreationScheduled = false
        guard state == .running else { return false }
        state = .recreatingProducer
        return true
    }

    mutating func recreationEnded() {
        guard state == .recreatingProducer else {
            preconditionFailure("re-creation ended in state \(state)")
        }
        state = .running
    }

    /// What the stop request should do now.
    enum StopStep: Sendable, Equatable {
        /// Drain: wait for outstanding reports.
        case drain
        /// A re-creation is under way: wait for it to end, then ask again.
        case waitForRecreation
        /// Already past this point.
        case nothing
    }

    mutating func stopRequested() -> StopStep {
        switch state {
        case .running:
            state = .draining
            recreationScheduled = false
            return .drain
        case .recreatingProducer:
            return .waitForRecreation
        case .draining, .closingProducer, .leaving, .stopped:
            return .nothing
        }
    }

    /// Draining is over (reports in, or the rest purged): stop the loops, close the producer.
    mutating func drained() {
        guard state == .draining else { preconditionFailure("drained in state \(state)") }
        state = .closingProducer
    }

    /// The producer is destroyed: nothing more can be sent; the leases may go.
    mutating func producerClosed() {
        guard state == .closingProducer else { preconditionFailure("producer closed in state \(state)") }
        state = .leaving
    }

    /// Leases released (or left to expire).
    mutating func left() {
        guard state == .leaving else { preconditionFailure("left in state \(state)") }
        state = .stopped
    }
}

/// Consecutive failures of a statement that shutdown retries: after `limit` failures in a row it
/// gives up (the rows stay in the outbox). A success resets the count, so failures spread over a
/// long life never add up to an early give-up.
struct ConsecutiveFailures: Sendable, Equatable {
    let limit: Int
    private(set) var count = 0

    init(limit: Int) { self.limit = limit }

    /// Records a failure; true when the limit is now exceeded.
    mutating func failed() -> Bool {
        count += 1
        return count > limit
    }

    mutating func succeeded() { count = 0 }
}
