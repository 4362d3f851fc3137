import Foundation
import PGClient

/// What `outbox-relay status` reports, read from the tables alone.
public struct OutboxStatus: Sendable, Codable {
    public struct Replica: Sendable, Codable {
        public let id: String
        public let hostname: String?
        public let heartbeatAgeSeconds: Double
        public let alive: Bool
        public let shards: Int
    }
    public struct Topic: Sendable, Codable {
        public let topic: String
        public let rows: Int64
        public let oldestAgeSeconds: Double
    }
    public let table: String
    public let backlog: Int64
    public let oldestAgeSeconds: Double?
    public let shardCount: Int
    public let unownedShards: Int
    public let deadLetters: Int64
    public let replicas: [Replica]
    public let topics: [Topic]

    public static func read(_ conn: PGConnection, table: OutboxTable) throws(PGError) -> OutboxStatus {
        let totals = try conn.query("""
            SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8::text FROM \(table.sql)
            """)
        let backlog = try totals.int64(0, 0)
        let oldest = totals.string(0, 1).flatMap(Double.init)
        let topics = try conn.query("""
            SELECT topic, count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8::text FROM \(table.sourceSQL) AS src
            GROUP BY topic ORDER BY count(*) DESC LIMIT 100
            """)
        var topicList: [Topic] = []
        for r in 0..<topics.rowCount {
            topicList.append(Topic(topic: topics.string(r, 0) ?? "", rows: try topics.int64(r, 1),
                                   oldestAgeSeconds: topics.string(r, 2).flatMap(Double.init) ?? 0))
        }
        let replicas = try conn.query("""
            SELECT r.replica_id, r.hostname, EXTRACT(EPOCH FROM now() - r.heartbeat_at)::float8::text,
                   r.expires_at > now(), (SELECT count(*) FROM \(table.leasesSQL) l WHERE l.owner = r.replica_id AND l.expires_at > now())
            FROM \(table.replicasSQL) r ORDER BY r.replica_id
            """)
        var replicaList: [Replica] = []
        for r in 0..<replicas.rowCount {
            replicaList.append(Replica(id: replicas.string(r, 0) ?? "", hostname: replicas.string(r, 1),
                                       heartbeatAgeSeconds: replicas.string(r, 2).flatMap(Double.init) ?? 0,
                                       alive: try replicas.bool(r, 3), shards: Int(try replicas.int64(r, 4))))
        }
        let shards = try conn.query("""
            SELECT count(*), count(*) FILTER (WHERE owner IS NULL OR expires_at <= now()) FROM \(table.leasesSQL)
            """)
        let deadLetters = try conn.query("SELECT count(*) FROM \(table.deadLetterSQL)").int64(0, 0)
        return OutboxStatus(table: table.description, backlog: backlog, oldestAgeSeconds: oldest,
                            shardCount: Int(try shards.int64(0, 0)), unownedShards: Int(try shards.int64(0, 1)),
                            deadLetters: deadLetters,
                            replicas: replicaList, topics: topicList)
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    public func text() -> String {
        var lines = ["table \(table): backlog \(backlog) rows, oldest \(oldestAgeSeconds.map { String(format: "%.1f s", $0) } ?? "-"), \(shardCount) shards (\(unownedShards) unowned), \(deadLetters) dead letter(s)"]
        for r in replicas {
            lines.append("  replica \(r.id) \(r.alive ? "alive" : "dead"), heartbeat \(String(format: "%.1f", r.heartbeatAgeSeconds)) s ago, \(r.shards) shards")
        }
        for t in topics {
            lines.append("  topic \(t.topic): \(t.rows) rows, oldest \(String(format: "%.1f", t.oldestAgeSeconds)) s")
        }
        return lines.joined(separator: "\n")
    }
}
