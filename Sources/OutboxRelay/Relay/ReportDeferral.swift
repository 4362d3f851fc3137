import Synchronization

/// Whether librdkafka's "events wait" callback wakes the report loop now, or only marks the
/// events, for the claim loop to take them when its own wait ends (a busy poll's pause, a
/// notified wait).
///
/// While the relay busy-polls (rows arrive faster than one per poll), each poll's rows go to
/// several partitions, and librdkafka sends one ProduceRequest per partition: their replies
/// come back one by one, and each used to wake a thread of the cooperative pool only to take a
/// few reports (about 4 wake-ups per poll at 500 rows/s, `/proc` per thread). Nothing needs those
/// reports before the next claim: the claim in flight was built before they came, so the
/// deletes they allow ride a later claim either way. So from the start of the claim loop's wait
/// (a busy poll's pause, or a notified wait and its linger, which a trickle's reports used to
/// interrupt the same way) until its end the callback only marks them, and the claim loop takes
/// them itself, on the claim session's thread, when the wait ends — just before the claim that
/// then carries their deletes (`Relay.takeDeferredEvents`). No thread is woken for them.
///
/// (Before, the claim loop called ``resume()`` when the claim returned, meaning the report loop
/// to run on the actor's thread after it; but a resumed continuation is queued on the global
/// pool, so that woke a pool thread per poll all the same: 145 wake-ups a second at 500 rows/s,
/// 71 after the change, with 14 % fewer voluntary switches in all and 7 % less CPU.)
///
/// Every other wait (for a notification, for room in the window, a retry, shutdown) runs with
/// the wake-ups on: ``resume()`` is called before it, and wakes the report loop if events were
/// marked meanwhile.
final class ReportDeferral: Sendable {
    private let deferring = Atomic<Bool>(false)
    private let marked = Atomic<Bool>(false)
    private let wake: WakeSignal

    init(wake: WakeSignal) {
        self.wake = wake
    }

    /// librdkafka's callback (a broker thread, under its queue's lock): mark, then wake unless
    /// deferring. Marking first: a ``resume()`` that this check misses sees the mark.
    func eventsReady() {
        marked.store(true, ordering: .sequentiallyConsistent)
        if !deferring.load(ordering: .sequentiallyConsistent) { wake.signal() }
    }

    /// From now until ``resume()``, events only mark.
    func deferWakes() {
        deferring.store(true, ordering: .sequentiallyConsistent)
    }

    /// Wake-ups on again; wakes the report loop if events were marked. Returns whether it was
    /// deferring and events had been marked meanwhile (their wake-up deferred, now sent).
    @discardableResult
    func resume() -> Bool {
        let wasDeferring = deferring.exchange(false, ordering: .sequentiallyConsistent)
        guard marked.load(ordering: .sequentiallyConsistent) else { return false }
        wake.signal()
        return wasDeferring
    }

    /// Whether events were marked since the last take, clearing the mark (before taking them:
    /// an event queued after the take announces itself again). A deferred report is handled up to
    /// a wait after its acknowledgement; commit → ack is dated by the acknowledgement's own time
    /// (``AckLatency``), not by this.
    func takeMark() -> Bool {
        marked.exchange(false, ordering: .sequentiallyConsistent)
    }

    var isDeferring: Bool { deferring.load(ordering: .sequentiallyConsistent) }
}
