import ArgumentParser
import OutboxRelay

/// Prints the README's configuration table from the settings table (the README is checked against it).
struct ConfigTable: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config-table", abstract: "Print the configuration table (Markdown) for the README.", shouldDisplay: false)

    func run() { print(Settings.markdownTable()) }
}
