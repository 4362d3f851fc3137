import Foundation
import Synchronization

/// A level-triggered wake-up for one waiting loop: `signal()` either resumes the waiter or is
/// remembered, so a signal sent while the loop was busy is never lost.
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
        var generation: UInt64 = 0
    }
    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let w = s.waiter { s.waiter = nil; return w }
            s.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when signalled (consuming the signal) or after `timeout` seconds. One waiter at a
    /// time. The timeout is a Dispatch timer rather than a task group with a sleeping child:
    /// this wait sits on the hot path of an idle relay woken per row.
    func wait(timeout: Double) async {
        if timeout <= 0 {
            state.withLock { $0.pending = false }
            return
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let generation = state.withLock { s -> UInt64? in
                if s.pending {
                    s.pending = false
                    return nil
                }
                s.generation &+= 1
                s.waiter = c
                return s.generation
            }
            guard let generation else {
                c.resume()
                return
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { [self] in
                let expired = self.state.withLock { s -> CheckedContinuation<Void, Never>? in
                    guard s.generation == generation, let w = s.waiter else { return nil }
                    s.waiter = nil
                    return w
                }
                expired?.resume()
            }
        }
    }
}

/// Seconds on a monotonic clock.
@inline(__always)
func monotonicSeconds() -> Double {
    Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000_000
}
