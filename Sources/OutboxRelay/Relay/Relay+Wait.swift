import Foundation
import Kafka
import Logging
import PGClient

/// How the claim loop waits when caught up: polling, the notification gate, a notification on
/// the claim session.
extension Relay {
    /// Caught up. With the notification gate: poll while busy, else declare the wait (the gate)
    /// and sleep until a notification (see ``WakeMode``). Without it (a table not migrated by this
    /// version, where every insert notifies): sleep until a notification or the poll timer.
    /// Either way a late-committing row is in the next read's window: nothing to ripen.
    func waitWhenCaughtUp(rows: Int, poll: Double, session: PGSession) async {
        let now = monotonicSeconds()
        guard notificationGate else {
            notifiedWait = waitUntilRetry(poll, now: now)
            return
        }
        wakeMode.observe(rows: rows, now: now)
        if wakeMode.mode == .polling, let opened = gateOpenedAt, let lease = leaseSession {
            // Switched to polling: close the gate this replica opened, so inserts stop notifying
            // now rather than when the declaration runs out. On the lease session, off the claim
            // loop's path: under a stream of inserts the setval took 35-85 ms (bench, durable).
            gateOpenedAt = nil
            let queries = outbox
            let logger = self.logger
            Task {
                do {
                    try await lease.withConnection { conn throws(PGError) in try queries.closeNotificationGate(conn, openedAt: opened) }
                } catch {
                    logger.debug("could not close the notification gate; it lapses by itself", metadata: [LogKey.error: "\(error)"])
                }
            }
        }
        if wakeMode.mode == .polling {
            // The next turn of the claim loop sleeps the pause on the claim session's thread,
            // then takes the reports that came meanwhile and claims, on that same thread: one
            // thread woken per poll instead of the timer's, a pool thread's, then the claim
            // session's (see claimStep).
            stats.busyPolls += 1
            pollPause = pacer.busyPause
            return
        }
        if gateClosedElsewhere.take() {
            // Another replica closed the gate (it switched to polling) after this one declared it:
            // inserts stopped notifying. Open it again; the reopening's claim and follow-up find
            // what was inserted meanwhile. (Before, such a replica slept until its renewal — half
            // a declaration, up to the poll interval: 3 replicas at 1000 rows/s had rows waiting
            // 200-850 ms.)
            wakeMode.gateClosed()
            gateOpenedAt = nil
        }
        // Holding every shard, this replica needs no shard in the notifications (see
        // Migration.notifyFunctionSQL): they wake every listener, and no other listens. A change
        // of holding declares again at once, with the other parity.
        let routed = leases.heldShards.count < leases.shardCount
        let parityChanged = wakeMode.mode == .notified && gateOpenedAt.map { ($0 & 1 == 1) != routed } == true
        if wakeMode.needsDeclaration(now: now) || parityChanged {
            let queries = outbox
            let millis = Int64(wakeMode.declaration * 1000)
            let reopening = wakeMode.declarationReopens(now: now)
            do {
                let opened = try await session.withConnection { conn throws(PGError) in
                    try queries.openNotificationGate(conn, forMillis: millis, takingXid: reopening, routed: routed)
                }
                gateOpenedAt = opened.value
                wakeMode.declared(now: now, reopeningXid: opened.xid)
                stats.gateDeclarations += 1
            } catch {
                logger.warning("could not ask for notifications; polling", metadata: [LogKey.error: "\(error)"])
            }
            // Rows committed before the gate opened sent no notification: read once more first.
            if wakeMode.justReopened { return }
        }
        notifiedWait = waitUntilRetry(wakeMode.notifiedWait(poll: poll, now: now), now: now)
    }

    /// The wait for a notification before the next claim: `timeout`, or until the next retry
    /// hold's release. (No extra millisecond to gather what else commits: rows that come that
    /// close together switch the relay to polling, and below that rate the extra timer was a
    /// thread wake-up per row and the millisecond pure latency.)
    func waitUntilRetry(_ timeout: Double, now: Double) -> Double {
        guard let due = retries.nextDue else { return timeout }
        return max(0.001, min(timeout, due - now))
    }

    /// A replica that holds no shard (a standby of the load spread) stops listening, so that a
    /// notifying insert costs neither its backend nor its thread a wake-up: PostgreSQL signals
    /// every listening backend of the database on every NOTIFY, whatever channels it listens to
    /// (a separate channel for rebalances would not spare it), and each such backend then runs a
    /// transaction to read the queue. It listens again before its first claim once it holds
    /// shards (rows committed in between are in that claim's snapshot). A standby learns of a
    /// rebalance from its own lease loop instead, which looks every second for a shard left free.
    /// A failure is left for the next turn (a lost connection comes back listening).
    func followRowsChannel(session: PGSession) async {
        if claimSessionFresh.take() { listeningForRows = true }
        defer { stats.listensToInserts = listeningForRows }
        let holds = !leases.heldShards.isEmpty
        guard holds != listeningForRows else { return }
        let statement = holds ? "LISTEN " + quoteIdentifier(table.channel) : "UNLISTEN *"
        do {
            try await session.withConnection { conn throws(PGError) in try conn.executeScript(statement) }
            listeningForRows = holds
        } catch {
            logger.debug("could not \(holds ? "listen to" : "leave") the inserts' channel", metadata: [LogKey.error: "\(error)"])
        }
    }

    /// Waits on the claim session for a notification that wakes the claim loop, a wake-up, or
    /// `timeout` (a failure is waited out as a timeout: the next claim finds it).
    func waitOnClaimSession(_ session: PGSession, timeout: Double) async {
        if claimWake.armInterrupt() { return }
        let router = notificationRouter
        do {
            _ = try await session.wait(timeout: timeout, interrupt: claimWake.interrupt!, accept: { router.accept($0) })
        } catch {
            await claimWake.wait(timeout: timeout)
        }
    }
}
