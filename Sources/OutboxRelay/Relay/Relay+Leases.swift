import Foundation
import Kafka
import Logging
import PGClient

/// Lease heartbeats, renewals and rebalancing.
extension Relay {
    // MARK: Leases

    /// How often a standby (holding no shard under the load spread) looks for shards to take:
    /// it hears no notification, so this bounds how long it takes to see a holder stop.
    static let standbyCheckSeconds = 1.0

    func leaseLoop() async {
        let interval = Double(configuration.effectiveHeartbeatMillis) / 1000
        var first = true
        var lastBeat = -Double.infinity
        while !terminated {
            leaseLoopBeat = monotonicSeconds()
            if !first, standingBy, leaseLoopBeat - lastBeat < interval, await !freeShardsExist() {
                // Nothing to take: the full beat (heartbeat, renewal, samples, probe) waits for
                // its interval.
                await leaseWake.wait(timeout: min(interval - (leaseLoopBeat - lastBeat), Self.standbyCheckSeconds))
                continue
            }
            lastBeat = leaseLoopBeat
            await leaseTick(announce: first)
            metricsBatch.flush(into: metrics)
            await sampleBacklog()
            probeBroker()
            forgetStaleMarkWhenClear()
            // Readiness as a metric follows the relay's own state, not only /readyz requests.
            _ = health()
            first = false
            // A standby does not listen (followRowsChannel): it looks every second for a shard
            // left free (a holder stopped) instead of waiting to be told; the holders' load it
            // reads with each full beat.
            await leaseWake.wait(timeout: standingBy ? min(interval, Self.standbyCheckSeconds) : interval)
        }
    }

    /// Holding no shard, and wanting none, under a spread that has some replica claim.
    var standingBy: Bool { desiredShardCount == 0 && leases.heldShards.isEmpty && stats.claimingReplicas > 0 }

    /// Whether some shard's lease is free or expired: a standby's cheap check between beats.
    func freeShardsExist() async -> Bool {
        guard let session = leaseSession else { return false }
        let queries = leaseQueries
        do {
            return try await session.withConnection { conn throws(PGError) in try queries.freeShardsExist(conn) }
        } catch {
            return true  // let the full beat find out (and report) what is wrong
        }
    }

    func leaseTick(announce: Bool) async {
        guard let session = leaseSession else { return }
        // Watchdog: rows awaiting a report or a retry, yet no delivery succeeded for too long
        // (e.g. a producer wedged by fencing that librdkafka does not report as fatal).
        let now = monotonicSeconds()
        watchdog.observe(awaiting: window.awaitingReport > 0 || !retries.isEmpty, now: now)
        let silentFor = watchdog.silence(now: now)
        if silentFor * 1000 > Double(configuration.effectiveWatchdogMillis) {
            scheduleRecreation(reason: "no delivery succeeded for \(Int(silentFor)) s with rows outstanding")
        }
        let queries = leaseQueries
        let replica = replicaId
        let leaseMillis = Int64(configuration.leaseDurationMillis)
        let duration = Double(configuration.leaseDurationMillis) / 1000
        let margin = Double(RelayConfiguration.leaseSafetyMarginMillis) / 1000
        let host = ProcessInfo.processInfo.hostName
        let pid = getpid()
        let held = leases.heldShards
        let sentAt = monotonicSeconds()
        busyMeter.sample(now: sentAt)
        // Published where the table has the column: the share under the load spread, NULL (this
        // replica spreads evenly, and so, then, do the others) under the even one.
        let spread = replicaBusy ? configuration.shardSpread : .even
        let busy: Double?? = replicaBusy ? (spread == .load ? .some((busyMeter.share * 1000).rounded() / 1000) : .some(nil)) : nil
        do {
            let (live, renewed) = try await session.withConnection { conn throws(PGError) in
                let live = try queries.heartbeat(conn, replica: replica, hostname: host, pid: pid,
                                                 version: RelayVersion.current, leaseMillis: leaseMillis, busy: busy)
                let renewed = try queries.renew(conn, replica: replica, shards: held, leaseMillis: leaseMillis)
                if announce { try queries.notifyRebalance(conn) }
                return (live, renewed.map { RenewedLease(shard: $0.shard, epoch: $0.epoch) })
            }
            stats.liveReplicas = live.count
            lastLeaseOK = monotonicSeconds()
            lastDatabaseError = nil
            metrics.leaseDuration.recordSeconds(lastLeaseOK - sentAt)
            metrics.liveReplicas.record(live.count)
            // Shards acquired while the renewal ran are not in `held`; keep them.
            let lost = leases.renewed(renewed.map { ($0.shard, $0.epoch) } + leases.leases.filter { !held.contains($0.key) }.map { ($0.key, $0.value.epoch) },
                                      sentAt: sentAt, duration: duration, margin: margin)
            if !lost.isEmpty {
                logger.warning("lost shard leases to another replica", metadata: ["outbox.shards": .stringConvertible(lost)])
            }
            if stopFlag.isSet { return }
            let claiming = ShardAssignment.active(live, spread: spread)
            let desired = ShardAssignment.shards(for: replica, claiming: claiming, shardCount: shardCount)
            stats.claimingReplicas = claiming.count
            metrics.claimingReplicas.record(stats.claimingReplicas)
            metrics.busyShare.record(busyMeter.share)
            if desired.count != desiredShardCount {
                desiredShardCount = desired.count
                desiredSince = monotonicSeconds()
            }
            let plan = leases.plan(desired: desired, inFlightByShard: window.byShard)
            leases.drain(plan.drain)
            leases.reactivate(plan.reactivate)
            if !plan.release.isEmpty {
                try await session.withConnection { conn throws(PGError) in
                    try queries.release(conn, replica: replica, shards: plan.release)
                    try queries.notifyRebalance(conn)
                }
                leases.released(plan.release)
                logger.info("released shards", metadata: ["outbox.shards": .stringConvertible(plan.release.count)])
            }
            // A shard this replica lost (paused past its lease, say) may still have rows of that
            // old tenure awaiting reports here. Take it again only once they are settled: until
            // then claims would skip them (they are in the window) and read the key's later rows,
            // which a late failure of theirs would then have overtaken.
            let acquire = plan.acquire.filter { window.inFlight(shard: $0) == 0 }
            if !acquire.isEmpty {
                let acquireAt = monotonicSeconds()
                let got = try await session.withConnection { conn throws(PGError) in
                    try queries.acquire(conn, replica: replica, shards: acquire, leaseMillis: leaseMillis)
                        .map { RenewedLease(shard: $0.shard, epoch: $0.epoch) }
                }
                if !got.isEmpty {
                    leases.acquired(got.map { ($0.shard, $0.epoch) }, sentAt: acquireAt, duration: duration, margin: margin)
                    logger.info("acquired shards", metadata: ["outbox.shards": .stringConvertible(got.count), "outbox.held": .stringConvertible(leases.heldShards.count)])
                }
            }
            // Wake the claim loop only when what it may claim changed (new or resumed shards):
            // an idle relay is otherwise woken by NOTIFY or its poll timer alone.
            if leases.claimable(now: monotonicSeconds()) != lastClaimable { claimWake.signal() }
            let nowHeld = leases.heldShards
            wakeFilter.update(nowHeld)
            metrics.shardsHeld.record(leases.heldShards.count)
        } catch {
            lastDatabaseError = "\(error)"
            logger.warning("lease heartbeat failed", metadata: [LogKey.error: "\(error)"])
        }
        if notificationGate, !stopFlag.isSet {
            // A declaration whose replica died or stopped waiting for notifications: cleared
            // here, by whichever replica beats first, since the trigger's WHEN tests only for a
            // declared gate (Migration.notifyTriggerSQL).
            let outbox = self.outbox
            do {
                if try await session.withConnection({ conn throws(PGError) in try outbox.clearLapsedNotificationGate(conn) }) {
                    stats.lapsedGatesCleared += 1
                }
            } catch {
                logger.debug("could not clear a lapsed notification gate", metadata: [LogKey.error: "\(error)"])
            }
        }
    }
}
