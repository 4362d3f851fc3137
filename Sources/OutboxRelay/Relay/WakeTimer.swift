import Foundation
import Synchronization
import CTimerFD
import PGClient

/// The timeouts of ``WakeSignal`` waits: one thread blocked on a `timerfd` armed for the
/// earliest deadline.
///
/// A wait's timeout is usually cancelled — a signal comes first (the next row, the next report)
/// — and a cancelled timeout must cost nothing. Dispatch's `asyncAfter` cannot be cancelled: every
/// wait's timer fired later and woke a pool thread for nothing, several per row of a trickle
/// (docs/BENCHMARKS.md: thread wake-ups were most of the relay's CPU per row). Here arming and
/// disarming are one `timerfd_settime` each, from the waiting thread, which does not wake the
/// timer thread: it wakes only when a deadline really passes.
final class WakeTimer: Sendable {
    static let shared = WakeTimer()

    private struct Entry {
        let deadline: UInt64  // CLOCK_MONOTONIC nanoseconds
        let fire: @Sendable () -> Void
    }
    private struct State {
        var entries: [UInt64: Entry] = [:]
        var nextId: UInt64 = 0
        var armedFor: UInt64 = 0  // 0: disarmed
    }
    private let state = Mutex(State())
    private let fd: Int32

    private init() {
        fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC))
        precondition(fd >= 0, "timerfd_create failed: errno \(errno)")
        let thread = Thread { [self] in nameCurrentThread("wake-timer"); run() }
        thread.name = "wake-timer"
        thread.start()
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Calls `fire` (on the timer thread) after `seconds`, unless ``cancel(_:)`` comes first.
    func schedule(after seconds: Double, _ fire: @escaping @Sendable () -> Void) -> UInt64 {
        let deadline = Self.now() + UInt64(max(0, min(seconds, 86_400)) * 1_000_000_000)
        return state.withLock { s in
            s.nextId &+= 1
            s.entries[s.nextId] = Entry(deadline: deadline, fire: fire)
            if s.armedFor == 0 || deadline < s.armedFor { arm(&s, deadline) }
            return s.nextId
        }
    }

    /// Suspends for `seconds`. The task resumes on its own executor straight from the timer
    /// thread (Task.sleep goes through Dispatch's timer and a pool thread first).
    static func sleep(_ seconds: Double) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            _ = shared.schedule(after: seconds) { c.resume() }
        }
    }

    /// Drops a timeout that has not fired; disarms the timer when it was the earliest.
    func cancel(_ id: UInt64) {
        state.withLock { s in
            guard let e = s.entries.removeValue(forKey: id) else { return }
            if e.deadline <= s.armedFor { arm(&s, s.entries.values.lazy.map(\.deadline).min() ?? 0) }
        }
    }

    private func arm(_ s: inout State, _ deadline: UInt64) {
        s.armedFor = deadline
        var spec = itimerspec()
        // An absolute deadline of 0 would disarm; one already passed fires at once.
        let at = deadline == 0 ? 0 : max(deadline, 1)
        spec.it_value.tv_sec = Int(at / 1_000_000_000)
        spec.it_value.tv_nsec = Int(at % 1_000_000_000)
        timerfd_settime(fd, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }

    private func run() {
        var expirations: UInt64 = 0
        while true {
            let n = read(fd, &expirations, 8)
            if n < 0 && errno != EINTR && errno != EAGAIN { return }
            let now = Self.now()
            let due = state.withLock { s -> [Entry] in
                let ids = s.entries.filter { $0.value.deadline <= now }.map(\.key)
                let due = ids.compactMap { s.entries.removeValue(forKey: $0) }
                arm(&s, s.entries.values.lazy.map(\.deadline).min() ?? 0)
                return due
            }
            for e in due { e.fire() }
        }
    }
}
