import PGClient

/// The outbox table's name and the names derived from it (relay tables, sequence, trigger,
/// notification channel). Every identifier is quoted wherever it reaches SQL.
public struct OutboxTable: Sendable, Equatable, CustomStringConvertible {
    public let schema: String
    public let name: String
    /// Which columns the messages come from (native, or Debezium's outbox layout).
    public var layout: OutboxLayout = .native

    /// Parses `table` or `schema.table` (unqualified names live in `public`).
    public init(_ qualified: String, layout: OutboxLayout) throws(RelayError) {
        try self.init(qualified)
        self.layout = layout
    }

    /// Parses `table` or `schema.table` (unqualified names live in `public`).
    public init(_ qualified: String) throws(RelayError) {
        let parts = qualified.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1: schema = "public"; name = parts[0]
        case 2: schema = parts[0]; name = parts[1]
        default: throw RelayError(.configuration, "invalid --table \"\(qualified)\": use TABLE or SCHEMA.TABLE")
        }
        guard !schema.isEmpty, !name.isEmpty, !qualified.contains("\0") else {
            throw RelayError(.configuration, "invalid --table \"\(qualified)\": empty schema or table name")
        }
        guard name.utf8.count <= 50 else {
            throw RelayError(.configuration, "invalid --table \"\(qualified)\": table names longer than 50 bytes leave no room for the relay's derived names")
        }
    }

    public var description: String { "\(schema).\(name)" }

    private func qualify(_ n: String) -> String { "\(quoteIdentifier(schema)).\(quoteIdentifier(n))" }

    /// `"schema"."outbox"`
    public var sql: String { qualify(name) }
    /// The quoted column the relay orders, claims and deletes by (`id`; `outbox_relay_id` in the
    /// Debezium layout, whose `id` is the application's event id).
    public var idSQL: String { quoteIdentifier(layout.idColumn) }
    public var leasesSQL: String { qualify("\(name)_leases") }
    public var replicasSQL: String { qualify("\(name)_replicas") }
    public var metaSQL: String { qualify("\(name)_relay_meta") }
    public var deadLetterSQL: String { qualify("\(name)_dead_letters") }
    public var sequenceSQL: String { qualify("\(name)_id_seq") }
    /// A sequence used as a clock value, not a counter: until when (database clock, ms since the
    /// epoch) some replica waits for notifications. Sequences are not transactional, so every
    /// inserting transaction's trigger sees the latest value whatever its snapshot. Its lowest
    /// bit says whether notifications must name the row's shard (odd: a listener holds only
    /// some shards; see ``Migration/notifyFunctionSQL(_:)``).
    public var notifyUntilSQL: String { qualify("\(name)_relay_notify") }
    /// The gate's clock: the database's time in milliseconds since the epoch, what a
    /// declaration in ``notifyUntilSQL`` is set from and compared with.
    /// `date_part`, not `extract`: `extract` returns `numeric` (since PostgreSQL 14), whose
    /// arithmetic cost a notifying INSERT about 5 us; `date_part` returns `float8`.
    public static let gateClockSQL = "(date_part('epoch', clock_timestamp()) * 1000)::bigint"
    public var notifyFunctionSQL: String { qualify("\(name)_notify") }
    /// The native layout's shard of a row, `<table>_shard(key, id)`: an IMMUTABLE SQL function
    /// with a SQL-standard body, which the planner inlines (schema version 3; see
    /// ``Migration/shardFunctionSQL(_:shards:)``).
    public var shardFunctionSQL: String { qualify("\(name)_shard") }
    /// ``shardFunctionSQL`` with its argument types, as `to_regprocedure` and `DROP FUNCTION` name it.
    public var shardFunctionSignatureSQL: String { "\(shardFunctionSQL)(bytea, bigint)" }
    /// The shard of the row `alias` (an alias of this table, or of ``sourceSQL``) as an SQL
    /// expression. Native layout: a call of ``shardFunctionSQL`` on its key and id, so that no
    /// INSERT computes a stored column (a table of schema version 2 still has one, with the same
    /// values, which nothing reads). Debezium layout: its stored `shard` column.
    public func shardSQL(_ alias: String) -> String {
        switch layout {
        case .native: return "\(shardFunctionSQL)(\(alias).key, \(alias).\(idSQL))"
        case .debezium: return "\(alias).shard"
        }
    }
    public var notifyTriggerName: String { "\(name)_notify" }
    /// LISTEN/NOTIFY channel: at most 63 bytes (the identifier limit; `pg_notify` refuses
    /// longer names while `LISTEN` would silently truncate them), cut at a character boundary so
    /// that a multibyte name is never split — the trigger and the listener use this one string.
    public var channel: String {
        let full = "outbox_relay:\(schema).\(name)"
        var out = ""
        var bytes = 0
        for c in full.unicodeScalars {
            let n = String(c).utf8.count
            if bytes + n > 63 { break }
            out.unicodeScalars.append(c)
            bytes += n
        }
        return out
    }

    /// Payload of the notification sent when replicas join or leave.
    public static let rebalancePayload = "rebalance"
    /// Payload of the notification a replica sends when it closes the notification gate (it
    /// switched to polling): replicas waiting for notifications open it again.
    public static let gateClosedPayload = "gate-closed"
}
