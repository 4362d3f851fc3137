import ArgumentParser
import Foundation
import OutboxRelay

/// `--database-url` and `--table`, shared by every subcommand and resolved as `run` resolves them
/// (flag > environment, also `OUTBOX_…_FILE` > default), through ``Settings``: declared once.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: settingHelp("database-url")) var databaseURL: String?
    @Option(name: .customLong("table"), help: settingHelp("table")) var table: String?
    @Option(name: .customLong("layout"), help: settingHelp("layout")) var layout: String?
    @Option(name: .customLong("debezium-option"), help: "Debezium EventRouter option NAME=VALUE, repeatable (with --layout debezium) [env: OUTBOX_DEBEZIUM_<NAME>]")
    var debeziumOption: [String] = []

    /// The flag values given, by setting name.
    var flagValues: [String: String] {
        var out: [String: String] = [:]
        if let databaseURL { out["database-url"] = databaseURL }
        if let table { out["table"] = table }
        if let layout { out["layout"] = layout }
        return out
    }

    /// The database URL and table, or a clear error and exit.
    func resolve() -> (url: String, table: OutboxTable) {
        do {
            let config = try Settings.resolve(flags: flagValues, debeziumOptions: debeziumOption,
                                              environment: ProcessInfo.processInfo.environment)
            guard !config.databaseURL.isEmpty else { fail("missing --database-url (OUTBOX_DATABASE_URL)") }
            return (config.databaseURL, try OutboxTable(config.table, layout: config.layout))
        } catch {
            fail(error.description)
        }
    }
}

/// A setting's help text, from the one declaration in ``Settings``.
func settingHelp(_ flag: String) -> ArgumentHelp {
    ArgumentHelp(Settings.all.first { $0.flag == flag }!.helpText)
}
