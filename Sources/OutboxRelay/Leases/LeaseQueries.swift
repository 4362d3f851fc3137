import PGClient

/// Lease and membership statements. Every time comes from the database clock (`now()`).
public struct LeaseQueries: Sendable {
    public let table: OutboxTable

    public init(table: OutboxTable) { self.table = table }

    /// Upserts this replica's heartbeat and returns the live replicas (including this one) in
    /// start order (oldest first), with their published busy share and whether each holds an
    /// unexpired lease (``ShardAssignment/active``). `busy`: where the table has the column
    /// (`migrate` since the load spread), this replica's share, or `.some(nil)` (NULL: it spreads
    /// evenly); nil where the table has no such column (every replica then reads as spreading
    /// evenly).
    public func heartbeat(_ conn: PGConnection, replica: String, hostname: String, pid: Int32,
                          version: String, leaseMillis: Int64, busy: Double??) throws(PGError) -> [ReplicaLoad] {
        if let busy {
            try conn.execute(prepared: "lease_heartbeat_busy", """
                INSERT INTO \(table.replicasSQL) (replica_id, hostname, pid, version, expires_at, busy)
                VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', $6)
                ON CONFLICT (replica_id) DO UPDATE SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at, busy = EXCLUDED.busy
                """, [.text(replica), .text(hostname), .int4(pid), .text(version), .int8(leaseMillis),
                      busy.map { .float8($0) } ?? .null(oid: PGType.float8)])
        } else {
            try conn.execute(prepared: "lease_heartbeat", """
                INSERT INTO \(table.replicasSQL) (replica_id, hostname, pid, version, expires_at)
                VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')
                ON CONFLICT (replica_id) DO UPDATE SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at
                """, [.text(replica), .text(hostname), .int4(pid), .text(version), .int8(leaseMillis)])
        }
        // Forget replicas dead for a long time so the table does not grow without bound.
        let busyColumn = busy == nil ? "NULL::float8" : "r.busy"
        let live = try conn.execute(prepared: busy == nil ? "lease_live" : "lease_live_busy", """
            WITH gone AS (DELETE FROM \(table.replicasSQL) WHERE expires_at < now() - interval '1 hour')
            SELECT r.replica_id, \(busyColumn),
                   EXISTS (SELECT 1 FROM \(table.leasesSQL) AS l WHERE l.owner = r.replica_id AND l.expires_at > now())
            FROM \(table.replicasSQL) AS r WHERE r.expires_at > now() ORDER BY r.started_at, r.replica_id
            """, [])
        var out: [ReplicaLoad] = []
        for i in 0..<live.rowCount {
            guard let id = live.string(i, 0) else { continue }
            out.append(ReplicaLoad(id: id, busy: live.isNull(i, 1) ? nil : try live.double(i, 1), holdsShards: try live.bool(i, 2)))
        }
        return out
    }

    /// Whether some shard's lease is free or expired (a standby's check between heartbeats).
    public func freeShardsExist(_ conn: PGConnection) throws(PGError) -> Bool {
        try conn.execute(prepared: "lease_free", """
            SELECT EXISTS (SELECT 1 FROM \(table.leasesSQL) WHERE owner IS NULL OR expires_at <= now())
            """, []).bool(0, 0)
    }

    /// Extends the leases this replica still owns; returns them with their epochs.
    public func renew(_ conn: PGConnection, replica: String, shards: [Int32], leaseMillis: Int64) throws(PGError) -> [(shard: Int32, epoch: Int64)] {
        if shards.isEmpty { return [] }
        let r = try conn.execute(prepared: "lease_renew", """
            UPDATE \(table.leasesSQL) SET expires_at = now() + $3 * interval '1 millisecond'
            WHERE owner = $1 AND shard = ANY($2::integer[]) RETURNING shard, epoch
            """, [.text(replica), .int4Array(shards), .int8(leaseMillis)])
        return try pairs(r)
    }

    /// Takes free or expired leases; each acquisition bumps the fencing epoch.
    public func acquire(_ conn: PGConnection, replica: String, shards: [Int32], leaseMillis: Int64) throws(PGError) -> [(shard: Int32, epoch: Int64)] {
        if shards.isEmpty { return [] }
        let r = try conn.execute(prepared: "lease_acquire", """
            UPDATE \(table.leasesSQL)
            SET owner = $1, epoch = epoch + 1, expires_at = now() + $3 * interval '1 millisecond', acquired_at = now()
            WHERE shard = ANY($2::integer[]) AND (owner IS NULL OR expires_at <= now())
            RETURNING shard, epoch
            """, [.text(replica), .int4Array(shards), .int8(leaseMillis)])
        return try pairs(r)
    }

    /// Gives leases back at once so another replica can take them without waiting for expiry.
    public func release(_ conn: PGConnection, replica: String, shards: [Int32]) throws(PGError) {
        if shards.isEmpty { return }
        try conn.execute(prepared: "lease_release", """
            UPDATE \(table.leasesSQL) SET owner = NULL, expires_at = NULL
            WHERE owner = $1 AND shard = ANY($2::integer[])
            """, [.text(replica), .int4Array(shards)])
    }

    /// Leaves the group: releases every lease and removes the replica row.
    public func leave(_ conn: PGConnection, replica: String) throws(PGError) {
        try conn.execute(prepared: "lease_leave_release", """
            UPDATE \(table.leasesSQL) SET owner = NULL, expires_at = NULL WHERE owner = $1
            """, [.text(replica)])
        try conn.execute(prepared: "lease_leave", "DELETE FROM \(table.replicasSQL) WHERE replica_id = $1", [.text(replica)])
    }

    /// Tells the other replicas to rebalance now rather than at their next heartbeat.
    public func notifyRebalance(_ conn: PGConnection) throws(PGError) {
        try conn.query("SELECT pg_notify($1, $2)", [.text(table.channel), .text(OutboxTable.rebalancePayload)])
    }

    private func pairs(_ r: PGResult) throws(PGError) -> [(shard: Int32, epoch: Int64)] {
        var out: [(shard: Int32, epoch: Int64)] = []
        for i in 0..<r.rowCount { out.append((try r.int32(i, 0), try r.int64(i, 1))) }
        return out
    }
}
