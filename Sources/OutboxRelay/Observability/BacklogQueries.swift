import PGClient

/// Cheap backlog figures: the planner statistics' live-row count (exactly 0 when the table is
/// empty, which the oldest-row probe decides) and the age of the oldest row by primary key.
struct BacklogQueries: Sendable {
    let table: OutboxTable

    func sample(_ conn: PGConnection) throws(PGError) -> (rows: Int64, oldestAgeSeconds: Double) {
        let r = try conn.execute(prepared: "backlog_sample", """
            SELECT (SELECT EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8::text FROM \(table.sql) ORDER BY id LIMIT 1),
                   (SELECT greatest(n_live_tup, 1) FROM pg_stat_user_tables WHERE relid = $1::text::regclass)
            """, [.text(table.sql)])
        guard let age = r.string(0, 0).flatMap(Double.init) else { return (0, 0) }
        let rows = r.isNull(0, 1) ? 1 : try r.int64(0, 1)
        return (rows, age)
    }
}
