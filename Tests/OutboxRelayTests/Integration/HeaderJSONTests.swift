import Foundation
@testable import OutboxRelay
import PGClient
import Testing

/// The claim reads `headers::text` and parses it in the relay; PostgreSQL's own
/// `jsonb_each_text` is the oracle for what each member must become.
@Suite struct HeaderJSONTests {
    static let objects: [String] = [
        #"{}"#,
        #"{"type": "OrderPaid"}"#,
        #"{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "rojo=00f067aa0ba902b7"}"#,
        #"{"n": 1, "f": -2.50e3, "t": true, "fa": false, "z": null, "e": ""}"#,
        #"{"nested": {"a": [1, "x,}]", {"b": null}], "c": "}{"}, "after": "ok"}"#,
        #"{"quote\"key": "tab\there \\ back/slash \/ \b\f\n\r", "ctl": "\u0001\u001f"}"#,
        #"{"unicode": "caf\u00e9 \u65e5\u672c \ud83d\ude00 ünïcødé 😀", "\u00fcber": "x"}"#,
        #"{"arr": [], "obj": {}, "s": "a:b:c", "k:v": "with colon"}"#,
    ]

    @Test(arguments: objects)
    func membersMatchJsonbEachText(_ object: String) throws {
        let conn = try TestEnvironment.connect()
        let text = try #require(try conn.query("SELECT $1::jsonb::text", [.text(object)]).string(0, 0))
        let expected = try conn.query("SELECT key, value FROM jsonb_each_text($1::jsonb)", [.text(object)])
        var want: [(String, [UInt8]?)] = []
        for r in 0..<expected.rowCount { want.append((expected.string(r, 0)!, expected.bytes(r, 1))) }
        var got: [(String, [UInt8]?)] = []
        var scratch: [UInt8] = []
        var bytes = Array(text.utf8)
        try bytes.withUnsafeMutableBytes { raw in
            try HeaderJSON.forEachMember(UnsafeRawBufferPointer(raw), scratch: &scratch) { name, value in
                got.append((String(decoding: name, as: UTF8.self), value.map { Array($0) }))
            }
        }
        #expect(got.map(\.0) == want.map(\.0), "names of \(text)")
        #expect(got.map(\.1) == want.map(\.1), "values of \(text)")
    }

    /// Random objects — control characters, quotes, backslashes, non-ASCII and astral characters
    /// in names and values, nested arrays and objects holding strings with brackets and commas —
    /// printed by PostgreSQL and checked member by member against `jsonb_each_text`.
    @Test func randomObjectsMatchJsonbEachText() throws {
        var rng = SplitMix(seed: 20261123)
        let alphabet: [String] = ["a", "Z", "0", " ", ",", ":", "{", "}", "[", "]", "\"", "\\", "/", "\n", "\t", "\u{01}", "\u{1f}",
                                  "é", "日", "😀", "\u{7f}", "\u{2028}"]
        func string() -> String {
            String((0..<Int(rng.next() % 8)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }.joined())
        }
        func quoted(_ s: String) -> String {
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
                default: out.unicodeScalars.append(u)
                }
            }
            return out + "\""
        }
        func value(depth: Int) -> String {
            switch rng.next() % (depth > 2 ? 5 : 7) {
            case 0: return "null"
            case 1: return ["true", "false"][Int(rng.next() % 2)]
            case 2: return ["0", "-1.5", "1e3", "12345678901234567890", "0.000"][Int(rng.next() % 5)]
            case 3, 4: return quoted(string())
            case 5: return "[" + (0..<Int(rng.next() % 3)).map { _ in value(depth: depth + 1) }.joined(separator: ",") + "]"
            default: return "{" + (0..<Int(rng.next() % 3)).map { _ in quoted(string()) + ":" + value(depth: depth + 1) }.joined(separator: ",") + "}"
            }
        }
        let conn = try TestEnvironment.connect()
        var scratch: [UInt8] = []
        for _ in 0..<300 {
            let object = "{" + (0..<Int(rng.next() % 5)).map { _ in quoted(string()) + ": " + value(depth: 0) }.joined(separator: ", ") + "}"
            let text = try #require(try conn.query("SELECT $1::jsonb::text", [.text(object)]).string(0, 0))
            let expected = try conn.query("SELECT key, value FROM jsonb_each_text($1::jsonb)", [.text(object)])
            var want: [[UInt8]?] = []
            for r in 0..<expected.rowCount { want.append(expected.bytes(r, 0)); want.append(expected.bytes(r, 1)) }
            var got: [[UInt8]?] = []
            try Array(text.utf8).withUnsafeBytes { raw in
                try HeaderJSON.forEachMember(raw, scratch: &scratch) { name, value in
                    got.append(Array(name))
                    got.append(value.map { Array($0) })
                }
            }
            #expect(got == want, "\(text)")
        }
    }

    /// Headers text the parser cannot read (PostgreSQL never prints such jsonb, so this stands
    /// for a gap in HeaderJSON) make the row unreadable — to be dead-lettered with the reason —
    /// with its key and value intact, instead of failing the whole claim.
    @Test func unreadableHeadersMarkTheRowInsteadOfFailingTheClaim() throws {
        let conn = try TestEnvironment.connect()
        let result = try conn.execute(prepared: "fake_claim_row_v2", """
            SELECT '1:1:'::text, 42::bigint, 7, 'orders', 'k'::bytea, 'v'::bytea, now(), $1::text, 0::bigint
            """, [.text(#"{"a": "b" "c"}"#)])
        var scratch: [UInt8] = []
        var topics = OutboxQueries.TopicNames()
        let row = try OutboxQueries.row(result, 0, shape: MessageShape(), scratch: &scratch, topics: &topics)
        #expect(row.id == 42 && row.shard == 7 && row.message.topic == "orders")
        #expect(row.unreadable?.contains("headers unreadable") == true, "\(row.unreadable ?? "nil")")
        #expect(row.message.keyBytes == Array("k".utf8) && row.message.valueBytes == Array("v".utf8))
        #expect(row.message.headerList.map(\.0) == [ClaimedRow.idHeader])
    }

    @Test(arguments: [#"{"a": "b""#, #"{"a" "b"}"#, #"["a"]"#, #"{"a": "b"} x"#, #"{"a": "\x"}"#, #"{"a": "\u12"}"#, #"{"a": }"#, #"{"a": [1}"#])
    func malformedTextIsRefusedWithTheOffset(_ text: String) {
        var scratch: [UInt8] = []
        let bytes = Array(text.utf8)
        #expect(throws: HeaderJSON.Malformed.self) {
            try bytes.withUnsafeBytes { raw in
                try HeaderJSON.forEachMember(raw, scratch: &scratch) { _, _ in }
            }
        }
    }
}
