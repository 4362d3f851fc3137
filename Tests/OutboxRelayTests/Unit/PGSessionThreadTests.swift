import Foundation
import PGClient
import Synchronization
import Testing

/// `PGSession.onThread`: a caller already on the session's thread runs the operation as a
/// function call; any other caller hops there. Either way it runs on that thread, isolated.
@Suite struct PGSessionThreadTests {
    final class Order: Sendable {
        let names = Mutex<[String]>([])
        func add(_ name: String) { names.withLock { $0.append(name) } }
    }

    /// No connection is made: the operations only record where and in which order they ran.
    func session() -> PGSession {
        PGSession(url: "postgresql://127.0.0.1:1/none", applicationName: "test", label: "onthread-test")
    }

    /// Like the relay's claim loop: an actor whose task prefers the session's thread.
    actor Caller {
        func callOnThread(_ session: PGSession, _ order: Order, sessionThread: pthread_t) async throws -> pthread_t {
            try await withTaskExecutorPreference(session.taskExecutor) {
                try await callOnThreadPreferred(session, order, sessionThread: sessionThread)
            }
        }

        func callOnThreadPreferred(_ session: PGSession, _ order: Order, sessionThread: pthread_t) async throws -> pthread_t {
            // The actor runs on with the thread it had until it is next scheduled: then,
            // normally, on the preferred one.
            let arrival = Date().addingTimeInterval(10)
            repeat {
                await Task.yield()
                try #require(Date() < arrival, "the task never ran on the session's thread")
            } while pthread_self() != sessionThread
            // A job queued for the session meanwhile waits behind this one: an operation that
            // hopped there would run after it.
            Task.detached { await session.onThread { _ in order.add("queued") } }
            // Spin without suspending: a suspension would free the thread to run that job.
            let deadline = Date().addingTimeInterval(10)
            while session.queuedJobs == 0 {
                try #require(Date() < deadline, "the other job was never queued")
                sched_yield()
            }
            return await session.onThread { _ in
                order.add("on thread")
                return pthread_self()
            }
        }
    }

    @Test func aCallerOnTheSessionsThreadRunsTheOperationBeforeJobsQueuedThere() async throws {
        let session = session()
        defer { Task { await session.close() } }
        let order = Order()
        let caller = Caller()
        let sessionThread = await session.onThread { _ in pthread_self() }
        let ranOn = try await caller.callOnThread(session, order, sessionThread: sessionThread)
        #expect(ranOn == sessionThread)
        let deadline = Date().addingTimeInterval(10)
        while order.names.withLock({ $0.count }) < 2 {
            try #require(Date() < deadline)
            await Task.yield()
        }
        #expect(order.names.withLock { $0 } == ["on thread", "queued"])
    }

    @Test func aCallerElsewhereHopsToTheSessionsThread() async {
        let session = session()
        defer { Task { await session.close() } }
        let sessionThread = await session.onThread { _ in pthread_self() }
        let callerThread = pthread_self()
        #expect(sessionThread != callerThread)
        let again = await session.onThread { s in
            s.pause(seconds: 0.001)
            return pthread_self()
        }
        #expect(again == sessionThread)
    }
}
