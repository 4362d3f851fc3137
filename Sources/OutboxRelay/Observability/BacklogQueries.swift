import PGClient

/// Cheap backlog figures: the planner statistics' live-row count (exactly 0 when the table is
/// empty, which the oldest-row probe decides) and the age of the oldest row by primary key.
struct BacklogQueries: Sendable {
    let table: OutboxTable

    /// Backlog (planner estimate; 0 when empty), oldest row age, and dead letters (exact up to
    /// 10 000: a gauge to alert on, cheap however large the table grows).
    func sample(_ conn: PGConnection) throws(PGError) -> (rows: Int64, oldestAgeSeconds: Double, deadLetters: Int64) {
        let r = try conn.execute(prepared: "backlog_sample_v2", """
            SELECT (SELECT EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8::text FROM \(table.sql) ORDER BY \(table.idSQL) LIMIT 1),
                   (SELECT greatest(n_live_tup, 1) FROM pg_stat_user_tables WHERE relid = $1::text::regclass),
                   (SELECT count(*) FROM (SELECT 1 FROM \(table.deadLetterSQL) LIMIT 10000) AS d)
            """, [.text(table.sql)])
        let deadLetters = try r.int64(0, 2)
        guard let age = r.string(0, 0).flatMap(Double.init) else { return (0, 0, deadLetters) }
        let rows = r.isNull(0, 1) ? 1 : try r.int64(0, 1)
        return (rows, age, deadLetters)
    }
}
