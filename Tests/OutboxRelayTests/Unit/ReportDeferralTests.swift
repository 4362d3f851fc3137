@testable import OutboxRelay
import Testing

/// ReportDeferral: during the claim loop's own waits, librdkafka's "events wait" callback only
/// marks them; every other wait has the report loop woken, also for events marked before it.
@Suite struct ReportDeferralTests {
    /// `armInterrupt` takes the signal's remembered wake-up: whether the report loop was woken.
    private func woken(_ wake: WakeSignal) -> Bool { wake.armInterrupt() }

    @Test func eventsWakeTheReportLoopUnlessDeferred() {
        let wake = WakeSignal()
        let d = ReportDeferral(wake: wake)
        d.eventsReady()
        #expect(woken(wake), "not deferring: the report loop is woken")
        #expect(d.takeMark(), "and the events are marked for whoever takes them first")
        #expect(!d.takeMark(), "taking clears the mark")

        d.deferWakes()
        d.eventsReady()
        d.eventsReady()
        #expect(!woken(wake), "deferring: no wake-up for events during a busy poll")
        #expect(d.takeMark(), "they stay marked for the report loop to take")
        #expect(!woken(wake))
    }

    @Test func resumingWakesForEventsMarkedMeanwhile() {
        let wake = WakeSignal()
        let d = ReportDeferral(wake: wake)
        d.deferWakes()
        d.eventsReady()
        #expect(!woken(wake))
        #expect(d.resume(), "it reports a deferred wake-up sent")
        #expect(woken(wake), "events marked while deferring are not left until the report loop's timeout")
        #expect(!d.isDeferring)
        #expect(d.takeMark(), "the woken report loop takes them")

        d.deferWakes()
        #expect(!d.resume(), "nothing marked: nothing deferred")
        #expect(!woken(wake), "nothing marked: resuming wakes nobody")
    }
}
