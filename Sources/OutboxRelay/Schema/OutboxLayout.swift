import PGClient

/// Which columns an outbox row's Kafka message comes from.
///
/// - `native`: the table `migrate` creates — `topic`, `key`, `value`, `headers`, ordered by `id`.
/// - `debezium`: a table in the layout of Debezium's outbox event router (`id uuid`,
///   `aggregatetype`, `aggregateid`, `type`, `payload`, …), mapped as the router maps it by default,
///   with its option names. `migrate --layout debezium` adds the relay's own columns next to the
///   application's (`outbox_relay_id`, `txid`, `shard`, `created_at`, `attempts`, `last_error`,
///   `not_before`, all with defaults), so the application's INSERT keeps working unchanged.
///
/// Every statement reads rows through ``sourceSQL``: a subquery that presents either layout as
/// the native columns (`id, txid, topic, key, value, headers, created_at, not_before,
/// attempts`, and for the Debezium layout its stored `shard`; a native row's shard is
/// ``OutboxTable/shardSQL(_:)``). PostgreSQL pulls such a subquery up into the statement, so the
/// indexes on the underlying columns serve it as before.
public enum OutboxLayout: Sendable, Equatable {
    case native
    case debezium(DebeziumRouting)

    public var name: String {
        switch self {
        case .native: "native"
        case .debezium: "debezium"
        }
    }

    /// The column the relay orders, claims and deletes by.
    public var idColumn: String {
        switch self {
        case .native: "id"
        case .debezium: "outbox_relay_id"
        }
    }

    /// Parses `--layout` and its options (Debezium's EventRouter option names).
    public static func parse(_ name: String, options: [(String, String)]) throws(RelayError) -> OutboxLayout {
        switch name.trimmingCharacters(in: .whitespaces).lowercased() {
        case "native", "":
            if let (n, _) = options.first {
                throw RelayError(.configuration, "--debezium-option \(n) given, but --layout is native (use --layout debezium)")
            }
            return .native
        case "debezium":
            return .debezium(try DebeziumRouting(options: options))
        default:
            throw RelayError(.configuration, "invalid --layout \"\(name)\": expected native or debezium")
        }
    }
}

/// Debezium's outbox event router (`io.debezium.transforms.outbox.EventRouter`), its defaults
/// and the subset of its options the relay implements. An option the relay does not implement is
/// refused by name rather than ignored.
public struct DebeziumRouting: Sendable, Equatable {
    /// `table.field.event.id` (default `id`): sent as header `id`.
    public var idField = "id"
    /// `table.field.event.key` (default `aggregateid`): the Kafka key (also what picks the shard).
    public var keyField = "aggregateid"
    /// `table.field.event.payload` (default `payload`): the Kafka value; NULL is a tombstone.
    public var payloadField = "payload"
    /// `route.by.field` (default `aggregatetype`).
    public var routeByField = "aggregatetype"
    /// `route.topic.replacement` (default `outbox.event.${routedByValue}`).
    public var topicReplacement = "outbox.event.${routedByValue}"
    /// `table.fields.additional.placement`: `column:header[:alias]`, comma-separated.
    public var headerFields: [(column: String, header: String)] = []
    /// `table.expand.json.payload` (default false): with true the value is the payload as compact
    /// JSON (what the router's expanded payload gives through Kafka's JsonConverter without
    /// schemas); with false it is the payload's text as stored (StringConverter).
    public var expandJSONPayload = false

    public static let routedByValue = "${routedByValue}"

    /// Options of Debezium's router that change nothing the relay does (logging, schema
    /// versioning for Connect's converters) are accepted; see the README.
    static let accepted: Set<String> = ["table.field.event.id", "table.field.event.key", "table.field.event.payload",
                                        "route.by.field", "route.topic.replacement", "route.topic.regex",
                                        "table.fields.additional.placement", "table.expand.json.payload"]

    public init() {}

    public init(options: [(String, String)]) throws(RelayError) {
        for (rawName, rawValue) in options {
            let name = rawName.trimmingCharacters(in: .whitespaces)
            let value = rawValue.trimmingCharacters(in: .whitespaces)
            func column() throws(RelayError) -> String {
                guard !value.isEmpty, !value.contains("\0") else {
                    throw RelayError(.configuration, "invalid Debezium option \(name)=\"\(value)\": a column name")
                }
                return value
            }
            switch name {
            case "table.field.event.id": idField = try column()
            case "table.field.event.key": keyField = try column()
            case "table.field.event.payload": payloadField = try column()
            case "route.by.field": routeByField = try column()
            case "route.topic.replacement":
                guard !value.isEmpty else { throw RelayError(.configuration, "invalid Debezium option route.topic.replacement: empty") }
                topicReplacement = value
            case "route.topic.regex":
                // The relay implements the router's default regex only: the whole routed value.
                guard value == "(?<routedByValue>.*)" else {
                    throw RelayError(.configuration, "Debezium option route.topic.regex=\"\(value)\" is not supported: the relay routes by the whole value, as the default (?<routedByValue>.*) does")
                }
            case "table.expand.json.payload":
                guard let b = Bool(value.lowercased()) else {
                    throw RelayError(.configuration, "invalid Debezium option table.expand.json.payload=\"\(value)\": true or false")
                }
                expandJSONPayload = b
            case "table.fields.additional.placement":
                headerFields = []
                for entry in value.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
                    let parts = entry.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                    guard parts.count == 2 || parts.count == 3, !parts[0].isEmpty else {
                        throw RelayError(.configuration, "invalid table.fields.additional.placement entry \"\(entry)\": expected column:header[:alias]")
                    }
                    guard parts[1] == "header" else {
                        throw RelayError(.configuration, "table.fields.additional.placement entry \"\(entry)\": placement \"\(parts[1])\" is not supported (the relay places additional fields in headers only)")
                    }
                    let header = parts.count == 3 && !parts[2].isEmpty ? parts[2] : parts[0]
                    guard header.lowercased() != "outbox-id", header != "id" else {
                        throw RelayError(.configuration, "table.fields.additional.placement entry \"\(entry)\": header \"\(header)\" is the relay's own")
                    }
                    headerFields.append((parts[0], header))
                }
            default:
                throw RelayError(.configuration, "Debezium option \"\(name)\" is not supported by outbox-relay (supported: \(Self.accepted.sorted().joined(separator: ", ")))")
            }
        }
        let parts = topicReplacement.components(separatedBy: Self.routedByValue)
        guard parts.count >= 2 || !topicReplacement.contains("$") else {
            throw RelayError(.configuration, "route.topic.replacement=\"\(topicReplacement)\": the only variable is ${routedByValue}")
        }
    }

    public static func == (a: DebeziumRouting, b: DebeziumRouting) -> Bool {
        a.idField == b.idField && a.keyField == b.keyField && a.payloadField == b.payloadField
            && a.routeByField == b.routeByField && a.topicReplacement == b.topicReplacement
            && a.expandJSONPayload == b.expandJSONPayload
            && a.headerFields.map { "\($0.column):\($0.header)" } == b.headerFields.map { "\($0.column):\($0.header)" }
    }

    /// Columns of the application's table the mapping reads.
    public var columns: [String] {
        var out = [idField, keyField, payloadField, routeByField]
        for h in headerFields where !out.contains(h.column) { out.append(h.column) }
        return out
    }

    /// SQL for the topic, from `route.topic.replacement` with `${routedByValue}` replaced by the
    /// route-by column of row alias `o`.
    func topicSQL(_ o: String) -> String {
        let column = "\(o).\(quoteIdentifier(routeByField))::text"
        let parts = topicReplacement.components(separatedBy: Self.routedByValue)
        if parts.count == 1 { return quoteLiteral(topicReplacement) }
        var pieces: [String] = []
        for (i, p) in parts.enumerated() {
            if i > 0 { pieces.append(column) }
            if !p.isEmpty { pieces.append(quoteLiteral(p)) }
        }
        return "(" + pieces.joined(separator: " || ") + ")"
    }

    /// The headers: `id` (the event id) and each additional placement, as a JSON object of text
    /// (a NULL column gives a header with a null value).
    func headersSQL(_ o: String) -> String {
        var pairs = ["'id', \(o).\(quoteIdentifier(idField))::text"]
        for h in headerFields { pairs.append("\(quoteLiteral(h.header)), \(o).\(quoteIdentifier(h.column))::text") }
        return "jsonb_build_object(\(pairs.joined(separator: ", ")))"
    }
}

extension OutboxTable {
    /// The outbox's rows as the native columns, whatever the layout (see ``OutboxLayout``).
    public var sourceSQL: String {
        switch layout {
        case .native:
            return sql
        case .debezium:
            // The message's columns (one mapping, shared with the dead-letter move) plus those
            // the claim filters on.
            return "(SELECT \(messageColumnsSQL(alias: "d")), d.txid, d.shard, d.not_before FROM \(sql) AS d)"
        }
    }

    /// `"schema"."outbox_relay_bytes"`: overloaded SQL functions (made by `migrate --layout
    /// debezium`) that turn a key or payload column of any usual type into the message's bytes —
    /// bytea as it is, text, varchar, uuid, json and jsonb as their UTF-8 text.
    public var bytesFunctionSQL: String { "\(quoteIdentifier(schema)).\(quoteIdentifier("outbox_relay_bytes"))" }
}

extension OutboxTable {
    /// `id, topic, key, value, headers, created_at, attempts` of row alias `alias`, as the
    /// message is sent: what a dead letter keeps.
    public func messageColumnsSQL(alias o: String) -> String {
        switch layout {
        case .native:
            return "\(o).id, \(o).topic, \(o).key, \(o).value, \(o).headers, \(o).created_at, \(o).attempts"
        case .debezium(let r):
            return "\(o).outbox_relay_id AS id, \(r.topicSQL(o)) AS topic, \(bytesFunctionSQL)(\(o).\(quoteIdentifier(r.keyField))) AS key, " +
                "\(bytesFunctionSQL)(\(o).\(quoteIdentifier(r.payloadField))) AS value, \(r.headersSQL(o)) AS headers, \(o).created_at, \(o).attempts"
        }
    }
}
