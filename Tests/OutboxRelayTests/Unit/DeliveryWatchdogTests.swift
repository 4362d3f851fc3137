import OutboxRelay
import Testing

/// The watchdog's clock: silence is time spent awaiting reports or retries with no success.
@Suite struct DeliveryWatchdogTests {
    @Test func timeWithNothingAwaitedIsNotSilence() {
        var w = DeliveryWatchdog()
        // A window full of acknowledged rows that cannot be deleted (the database cut off for
        // 13 s): nothing is awaited from the producer, heartbeat after heartbeat.
        for t in stride(from: 0.0, through: 13.0, by: 0.3) { w.observe(awaiting: false, now: t) }
        #expect(w.silence(now: 13.0) == 0)
        // Production resumes: the first heartbeat that sees a report awaited starts the count.
        w.observe(awaiting: true, now: 13.3)
        #expect(w.silence(now: 13.4) < 0.2, "not the 13 s since the last delivery")
    }

    @Test func awaitingWithoutSuccessIsSilenceUntilADeliverySucceeds() {
        var w = DeliveryWatchdog()
        w.observe(awaiting: true, now: 1)
        w.observe(awaiting: true, now: 5)
        #expect(w.silence(now: 11) == 10, "a wedged producer: the count runs from the first awaited report")
        w.restart(now: 11)
        #expect(w.silence(now: 12) == 1)
        w.observe(awaiting: false, now: 12.5)
        #expect(w.silence(now: 20) == 0)
        // A success while nothing is awaited starts no count.
        w.restart(now: 21)
        #expect(w.silence(now: 30) == 0)
    }
}
