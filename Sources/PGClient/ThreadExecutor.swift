import Foundation

/// A serial executor backed by one dedicated OS thread.
///
/// Blocking C calls (libpq) run here instead of on Swift's cooperative pool. An actor that uses
/// this as its `unownedExecutor` and keeps its methods synchronous runs every call on this one
/// thread, one at a time — which is exactly what a `PGconn` requires.
///
/// It is also a task executor: a task that prefers it (`withTaskExecutorPreference`) runs its
/// nonisolated code, and the code of default actors it enters, on this thread between the
/// session's own calls — no hand-over to another thread and back around each call.
public final class ThreadExecutor: SerialExecutor, TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    public init(name: String) {
        let thread = Thread { [self] in nameCurrentThread(name); run() }
        thread.name = name
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        condition.lock()
        jobs.append(unowned)
        condition.signal()
        condition.unlock()
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }

    /// Lets the thread exit once the queued jobs have run.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        var batch: [UnownedJob] = []
        let serial = asUnownedSerialExecutor(), task = asUnownedTaskExecutor()
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty && stopping { condition.unlock(); return }
            swap(&batch, &jobs)
            condition.unlock()
            for job in batch { job.runSynchronously(isolatedTo: serial, taskExecutor: task) }
            batch.removeAll(keepingCapacity: true)
        }
    }
}
