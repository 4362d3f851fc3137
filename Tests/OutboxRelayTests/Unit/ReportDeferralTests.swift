@testable import OutboxRelay
import Dispatch
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
        #expect(d.takeMark().marked, "and the events are marked for whoever takes them first")
        #expect(!d.takeMark().marked, "taking clears the mark")

        d.deferWakes()
        d.eventsReady()
        d.eventsReady()
        #expect(!woken(wake), "deferring: no wake-up for events during a busy poll")
        #expect(d.takeMark().marked, "they stay marked for the report loop to take")
        #expect(!woken(wake))
    }

    /// Deferred reports are handled up to a wait later; commit → ack dates them by the first
    /// event queued since the last take, not by the later ones nor by the take.
    @Test func theMarkIsDatedByTheFirstEventSinceTheLastTake() {
        let d = ReportDeferral(wake: WakeSignal())
        d.deferWakes()
        let before = DispatchTime.now().uptimeNanoseconds
        d.eventsReady()
        let afterFirst = DispatchTime.now().uptimeNanoseconds
        d.eventsReady()
        let mark = d.takeMark()
        #expect(mark.marked)
        #expect(mark.at >= before && mark.at <= afterFirst, "dated \(mark.at), the first event came in [\(before), \(afterFirst)]")

        // After a take, the next event dates the next mark.
        let beforeNext = DispatchTime.now().uptimeNanoseconds
        d.eventsReady()
        let next = d.takeMark()
        #expect(next.marked && next.at >= beforeNext, "a new mark, dated anew")
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
        #expect(d.takeMark().marked, "the woken report loop takes them")

        d.deferWakes()
        #expect(!d.resume(), "nothing marked: nothing deferred")
        #expect(!woken(wake), "nothing marked: resuming wakes nobody")
    }
}
