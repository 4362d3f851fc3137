import Foundation
@testable import OutboxRelay
import PGClient
import Testing

/// Seeded property tests ("fuzzing" with a bounded number of iterations) of the parsers and
/// quoting that take outside input: table names, identifiers and literals, the config file,
/// connection strings and redaction. The seed is in each test's arguments; a failure names the
/// input. (The headers JSON parser is checked against PostgreSQL in HeaderJSONTests.)
@Suite struct ParserPropertyTests {
    static let alphabet: [Character] = Array("abcXYZ09_.$'\"\\ -:/@%?#=;&\n\tüß漢😀") + ["\u{7f}", "\u{1}"]

    static func randomString(_ rng: inout SplitMix, maxLength: Int = 24) -> String {
        let n = Int(rng.next() % UInt64(maxLength + 1))
        return String((0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] })
    }

    /// Undoes quoteIdentifier: strips the outer quotes, halves doubled ones; nil if malformed.
    static func unquoteIdentifier(_ q: String) -> String? {
        guard q.count >= 2, q.first == "\"", q.last == "\"" else { return nil }
        let inner = q.dropFirst().dropLast()
        var out = ""
        var i = inner.startIndex
        while i < inner.endIndex {
            if inner[i] == "\"" {
                let next = inner.index(after: i)
                guard next < inner.endIndex, inner[next] == "\"" else { return nil }  // a lone quote would end it
                out.append("\"")
                i = inner.index(after: next)
            } else {
                out.append(inner[i])
                i = inner.index(after: i)
            }
        }
        return out
    }

    @Test(arguments: [11, 12, 13] as [UInt64])
    func tableNamesAreRefusedClearlyOrQuotedSoNothingEscapes(seed: UInt64) {
        var rng = SplitMix(seed: seed)
        for _ in 0..<800 {
            let text = Self.randomString(&rng, maxLength: 60)
            let table: OutboxTable
            do {
                table = try OutboxTable(text)
            } catch {
                #expect(error.message.contains("--table"), "seed \(seed): the refusal names the setting: \(error) for \(text.debugDescription)")
                continue
            }
            for name in [table.schema, table.name, "\(table.name)_leases", table.notifyTriggerName] {
                #expect(Self.unquoteIdentifier(quoteIdentifier(name)) == name, "seed \(seed): \(name.debugDescription)")
            }
            #expect(table.channel.utf8.count <= 63, "seed \(seed)")
            #expect("outbox_relay:\(table.schema).\(table.name)".hasPrefix(table.channel), "seed \(seed): the channel is a whole-character prefix")
            let literal = quoteLiteral(table.channel)
            if literal.hasPrefix("E'") {
                #expect(!literal.dropFirst(2).dropLast().replacingOccurrences(of: "''", with: "").replacingOccurrences(of: "\\\\", with: "").contains("'"))
            } else {
                #expect(!table.channel.contains("\\"), "plain literals only without backslashes")
                #expect(!literal.dropFirst().dropLast().replacingOccurrences(of: "''", with: "").contains("'"), "seed \(seed)")
            }
            let body = Migration.notifyFunctionSQL(table)
            #expect(body.contains("pg_notify("), "seed \(seed)")
        }
    }

    @Test(arguments: [21, 22] as [UInt64])
    func dollarQuotesChooseATagTheBodyDoesNotContain(seed: UInt64) {
        var rng = SplitMix(seed: seed)
        for _ in 0..<2000 {
            var body = Self.randomString(&rng)
            if rng.next() % 2 == 0 { body += "$outbox_relay$" + Self.randomString(&rng) + "$outbox_relay_1$" }
            let quoted = dollarQuote(body)
            let end = quoted.dropFirst().firstIndex(of: "$")!
            let openTag = String(quoted[quoted.startIndex...end])
            #expect(quoted.hasSuffix(openTag) && !body.contains(openTag), "seed \(seed): \(body.debugDescription)")
            #expect(String(quoted.dropFirst(openTag.count).dropLast(openTag.count)) == body)
        }
    }

    @Test(arguments: [31, 32] as [UInt64])
    func configFilesParseOrNameTheLine(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-\(UUID().uuidString).conf").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        for _ in 0..<500 {
            let lines = (0..<Int(rng.next() % 6)).map { _ in Self.randomString(&rng, maxLength: 30) }
            try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
            do {
                let values = try Settings.readFile(path)
                for (k, _) in values { #expect(!k.contains("\n"), "seed \(seed)") }
            } catch {
                #expect(error.message.contains("line "), "seed \(seed): names the line: \(error)")
            }
        }
    }

    @Test(arguments: [41, 42] as [UInt64])
    func aRegisteredSecretNeverSurvivesRedaction(seed: UInt64) {
        var rng = SplitMix(seed: seed)
        defer { Secrets.reset() }   // random "secrets" must not garble later tests' messages
        for _ in 0..<300 {
            var secret = Self.randomString(&rng, maxLength: 16).replacingOccurrences(of: "*", with: "")
            while secret.count < 3 { secret += "k" }
            Secrets.register(secret)
            let text = Self.randomString(&rng) + secret + Self.randomString(&rng) + secret.uppercased() + secret
            #expect(!Redaction.redact(text).contains(secret), "seed \(seed): \(secret.debugDescription) in \(text.debugDescription)")
        }
    }

    @Test(arguments: [51, 52] as [UInt64])
    func connectionStringsAreRefusedWithoutEchoOrParsed(seed: UInt64) {
        var rng = SplitMix(seed: seed)
        defer { Secrets.reset() }
        for _ in 0..<300 {
            var password = Self.randomString(&rng, maxLength: 12).replacingOccurrences(of: "*", with: "")
            password = "Zq" + password + "Wv9"   // long and distinctive enough to search for
            let url = rng.next() % 2 == 0
                ? "postgresql://user:\(password)@127.0.0.1:5/db"
                : "host=127.0.0.1 port=5 password='\(password.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'"))' dbname=x"
            do {
                try ConnectionString.inspect(url)
            } catch {
                #expect(!"\(error)".contains(password), "seed \(seed): \(error) echoes \(password.debugDescription)")
            }
        }
    }
}
