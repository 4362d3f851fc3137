import PGClient

/// What a notification on the table's channel does, read on the claim session's thread (which
/// LISTENs; see `Relay.claimLoop`): a rebalance wakes the lease loop; an insert into a shard this
/// replica holds, or another replica closing the notification gate, wakes the claim loop.
struct NotificationRouter: Sendable {
    let claimWake: WakeSignal
    let leaseWake: WakeSignal
    let wakeFilter: WakeFilter
    let gateClosedElsewhere: AtomicFlag

    /// Whether `note` wakes the claim loop (acting on a rebalance at once).
    func accept(_ note: PGConnection.Notification) -> Bool {
        if note.payload == OutboxTable.rebalancePayload {
            leaseWake.signal()
            return false
        }
        if note.payload == OutboxTable.gateClosedPayload {
            // A replica closed the gate: if this one sleeps on it, it opens it again.
            gateClosedElsewhere.set()
            return true
        }
        // Only rows of shards this replica holds wake its claim loop.
        return wakeFilter.wakes(note.payload)
    }

    /// Whether any of `notes` wakes the claim loop (each is acted on).
    func take(_ notes: [PGConnection.Notification]) -> Bool {
        notes.reduce(false) { accept($1) || $0 }
    }
}

extension Relay {
    nonisolated var notificationRouter: NotificationRouter {
        NotificationRouter(claimWake: claimWake, leaseWake: leaseWake, wakeFilter: wakeFilter, gateClosedElsewhere: gateClosedElsewhere)
    }
}
