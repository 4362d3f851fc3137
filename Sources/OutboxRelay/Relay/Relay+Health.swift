import Foundation
import Kafka
import Logging
import PGClient

/// Backlog sampling, the broker probe, liveness and readiness.
extension Relay {
    /// Backlog and oldest-row age for the metrics, once per heartbeat.
    func sampleBacklog() async {
        guard let session = leaseSession, !terminated else { return }
        let queries = backlog
        do {
            let (rows, age, deadLetters) = try await session.withConnection { conn throws(PGError) in try queries.sample(conn) }
            metrics.backlogRows.record(rows)
            metrics.oldestRowAge.record(age)
            metrics.deadLetters.record(deadLetters)
        } catch {
            lastDatabaseError = "\(error)"
        }
    }

    /// Checks, off the actor, that a broker answers; the result feeds readiness.
    func probeBroker() {
        guard !probing, let producer else { return }
        probing = true
        let timeout = Int32(min(2_000, max(200, configuration.effectiveHeartbeatMillis)))
        Task {
            let error = await producer.probe(timeoutMilliseconds: timeout)
            self.brokerProbed(error)
        }
    }

    func brokerProbed(_ error: KafkaError?) {
        probing = false
        brokerError = error.map { "no broker answered: \($0)" }
    }

    /// `outbox_relay_produce_to_ack_seconds` in Prometheus text format (see ``ackLatency``), for
    /// `/metrics` to append to the registry's own.
    public nonisolated func ackLatencyMetricText() -> String {
        ackLatency.prometheusText(
            name: RelayMetrics.produceToAckLabel,
            help: "Produce call to broker acknowledgement, per acknowledged message (timed on librdkafka's broker thread).",
            labels: "table=\"\(AckLatency.labelValue(table.description))\"")
    }

    /// Liveness and readiness, with the reason for each check.
    public func health() -> RelayHealth {
        let now = monotonicSeconds()
        let poll = Double(configuration.pollIntervalMillis) / 1000
        let heartbeat = Double(configuration.effectiveHeartbeatMillis) / 1000
        let alive = !terminated && claimLoopBeat > 0 && now - claimLoopBeat < poll + 60 && now - leaseLoopBeat < heartbeat + 60
        let dbFresh = lastLeaseOK > 0 && now - lastLeaseOK < max(3 * heartbeat, 3)
        let database = RelayHealth.Check(
            ok: dbFresh,
            detail: dbFresh ? "lease heartbeat \(String(format: "%.1f", now - lastLeaseOK)) s ago"
                : "no successful lease heartbeat\(lastLeaseOK > 0 ? " for \(Int(now - lastLeaseOK)) s" : " yet")\(lastDatabaseError.map { ": \($0)" } ?? "")")
        let kafka = RelayHealth.Check(ok: brokerError == nil, detail: brokerError ?? "a broker answered")
        let held = leases.heldShards.count
        let waiting = now - desiredSince < Double(configuration.leaseDurationMillis) / 1000 + 2 * heartbeat
        let shardsOK = dbFresh && (held >= desiredShardCount || waiting)
        let shards = RelayHealth.Check(
            ok: shardsOK,
            detail: "holds \(held) of \(desiredShardCount) assigned shards\(held < desiredShardCount && waiting ? " (acquiring)" : "")"
                + (desiredShardCount == 0 && stats.claimingReplicas > 0 ? " (standing by: \(stats.claimingReplicas) of \(stats.liveReplicas) replicas claim)" : ""))
        let stopping = RelayHealth.Check(ok: !stopFlag.isSet, detail: stopFlag.isSet ? "shutting down" : "running")
        let checks = ["database": database, "kafka": kafka, "shards": shards, "lifecycle": stopping]
        let ready = alive && checks.values.allSatisfy(\.ok)
        metrics.ready.record(ready ? 1 : 0)
        return RelayHealth(alive: alive, ready: ready, checks: checks, replica: replicaId)
    }
}
