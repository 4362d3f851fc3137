import Foundation
import PGClient
import Synchronization

/// A level-triggered wake-up: `signal()` resumes every current waiter, or — when nobody waits —
/// is remembered for the next one, so a signal sent while a loop was busy is never lost.
///
/// Several tasks may wait at once (the shutdown drain and a producer re-creation both wait for
/// the in-flight window to move): each keeps its own continuation and its own timeout, and a
/// signal wakes them all. (An earlier version kept one waiter and silently replaced it, so the
/// first waiter's continuation — and its timeout — were lost.)
final class WakeSignal: Sendable {
    private struct Waiter {
        let continuation: CheckedContinuation<Void, Never>
        var timer: UInt64?
    }
    private struct State {
        var pending = false
        var waiters: [UInt64: Waiter] = [:]
        var nextId: UInt64 = 0
    }
    private let state = Mutex(State())
    /// Also signalled by every ``signal()``: a claim session's wait on its connection (see
    /// `Relay.claimLoop`) is a wait on this signal too.
    let interrupt: WaitInterrupt?

    init(interrupt: WaitInterrupt? = nil) {
        self.interrupt = interrupt
    }

    /// Before a wait on ``interrupt``: forgets the interrupt's old signals, then takes a signal
    /// sent while nobody waited. True: one came, do not wait. In this order (and ``signal()``
    /// writing the interrupt after the state), every signal shows in one of the two.
    func armInterrupt() -> Bool {
        interrupt?.reset()
        return state.withLock { s in
            defer { s.pending = false }
            return s.pending
        }
    }

    func signal() {
        // After the state: see armInterrupt.
        defer { interrupt?.signal() }
        let woken = state.withLock { s -> [Waiter] in
            if s.waiters.isEmpty {
                s.pending = true
                return []
            }
            let all = Array(s.waiters.values)
            s.waiters.removeAll(keepingCapacity: true)
            return all
        }
        for w in woken {
            if let t = w.timer { WakeTimer.shared.cancel(t) }
            w.continuation.resume()
        }
    }

    /// Number of tasks waiting now (for tests).
    var waiterCount: Int { state.withLock { $0.waiters.count } }

    /// Returns when signalled (consuming the signal) or after `timeout` seconds. The timeout is
    /// a ``WakeTimer`` entry, cancelled when the signal comes first: this wait sits on the hot
    /// path of a relay woken per row, and a timeout that fires for nothing wakes a thread.
    func wait(timeout: Double) async {
        if timeout <= 0 {
            state.withLock { $0.pending = false }
            return
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let id = state.withLock { s -> UInt64? in
                if s.pending {
                    s.pending = false
                    return nil
                }
                s.nextId &+= 1
                s.waiters[s.nextId] = Waiter(continuation: c)
                return s.nextId
            }
            guard let id else {
                c.resume()
                return
            }
            let timer = WakeTimer.shared.schedule(after: timeout) { [self] in
                let expired = self.state.withLock { $0.waiters.removeValue(forKey: id) }
                expired?.continuation.resume()
            }
            // Record the timer so that a signal cancels it — unless the signal already came.
            let stillWaiting = state.withLock { s -> Bool in
                guard s.waiters[id] != nil else { return false }
                s.waiters[id]?.timer = timer
                return true
            }
            if !stillWaiting { WakeTimer.shared.cancel(timer) }
        }
    }
}

/// Seconds on a monotonic clock.
@inline(__always)
func monotonicSeconds() -> Double {
    Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000_000
}
