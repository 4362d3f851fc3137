@testable import OutboxRelay
import PGClient
import Foundation
import Testing

@Suite struct RelayLifecycleTests {
    @Test func shutdownStepsComeInOrderAndLeasesGoLast() {
        var l = RelayLifecycle()
        #expect(l.producing && !l.terminated)
        let r1 = l.stopRequested()
        #expect(r1 == .drain)
        #expect(!l.producing, "nothing is produced while draining")
        let r2 = l.stopRequested()
        #expect(r2 == .nothing)
        l.drained()
        #expect(l.terminated && l.state == .closingProducer)
        l.producerClosed()
        #expect(l.state == .leaving, "leases are released only once the producer is closed")
        l.left()
        #expect(l.state == .stopped)
    }

    @Test func aRecreationCannotStartOnceShutdownBegan() {
        var l = RelayLifecycle()
        let r3 = l.requestRecreation()
        #expect(r3)
        let r4 = l.requestRecreation()
        #expect(!r4, "scheduled once")
        let r5 = l.stopRequested()
        #expect(r5 == .drain)
        let r6 = l.recreationStarts()
        #expect(!r6, "the scheduled task finds the relay draining and does nothing")
        let r7 = l.requestRecreation()
        #expect(!r7)
    }

    @Test func aStopDuringARecreationWaitsForIt() {
        var l = RelayLifecycle()
        let r8 = l.requestRecreation()
        #expect(r8)
        let r9 = l.recreationStarts()
        #expect(r9)
        #expect(!l.producing)
        let r10 = l.stopRequested()
        #expect(r10 == .waitForRecreation)
        l.recreationEnded()
        let r11 = l.stopRequested()
        #expect(r11 == .drain)
    }

    @Test func shutdownGivesUpOnlyAfterConsecutiveFailures() {
        var f = ConsecutiveFailures(limit: 3)
        for _ in 0..<100 {
            let r12 = f.failed()
            #expect(!r12)
            f.succeeded()
        }
        let three = [f.failed(), f.failed(), f.failed()]
        #expect(three == [false, false, false])
        let r13 = f.failed()
        #expect(r13, "the fourth failure in a row exceeds the limit")
    }

    /// Two tasks wait on one signal at once (the shutdown drain and a producer re-creation):
    /// both are woken, and neither loses its own timeout.
    @Test func everyWaiterIsWokenAndKeepsItsTimeout() async throws {
        let signal = WakeSignal()
        async let a: Void = signal.wait(timeout: 30)
        async let b: Void = signal.wait(timeout: 30)
        while signal.waiterCount < 2 { try await Task.sleep(nanoseconds: 1_000_000) }
        let started = Date()
        signal.signal()
        _ = await (a, b)
        #expect(Date().timeIntervalSince(started) < 5, "both woken by one signal")
        // A short timeout expires on its own while another waiter stays.
        async let long: Void = signal.wait(timeout: 30)
        while signal.waiterCount < 1 { try await Task.sleep(nanoseconds: 1_000_000) }
        let t0 = Date()
        await signal.wait(timeout: 0.05)
        #expect(Date().timeIntervalSince(t0) < 5)
        #expect(signal.waiterCount == 1, "the long waiter is still there")
        signal.signal()
        await long
    }

    /// A statement timing out on a loaded server at start-up is retried, not taken for a bad
    /// configuration (a rolling restart under load once exited 2 on "canceling statement due to
    /// statement timeout" in the schema check).
    @Test func momentaryDatabaseConditionsAreTransientAndBadSettingsAreNot() {
        for s in ["57014", "55P03", "53300", "57P03", "40001", "40P01"] {
            #expect(PGError(.queryFailed, sqlState: s, message: "x").isTransient, "\(s)")
            #expect(RelayError(database: PGError(.queryFailed, sqlState: s, message: "x"), context: "c").transient)
        }
        for s in ["42P01", "42501", "28P01", "3D000"] {
            #expect(!PGError(.queryFailed, sqlState: s, message: "x").isTransient, "\(s)")
        }
        #expect(!PGError(.connectionFailed, message: "refused").isTransient)
    }
}
