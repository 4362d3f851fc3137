/// Reads a row's `headers` as PostgreSQL prints a `jsonb` object (`headers::text`) and hands
/// each member to a closure as header bytes, with the meaning `jsonb_each_text` gives them:
/// string values unescaped, JSON `null` as a nil value, any other value as its JSON text
/// (`1`, `true`, `{"a": 1}`), members in the object's stored order.
///
/// The claim used to expand headers in the database (`jsonb_each_text` and two `array_agg`s
/// per row, a lateral subquery): measured on a 200 000-row backlog that was a third of the
/// claim's PostgreSQL CPU, while printing the object as text costs a fifth of that and the
/// parse below is a single pass over a few dozen bytes.
enum HeaderJSON {
    struct Malformed: Error, CustomStringConvertible {
        let offset: Int
        let reason: String
        var description: String { "headers JSON malformed at byte \(offset): \(reason)" }
    }

    /// Calls `body(name, value)` for every member of the object in `text`. Both buffers are
    /// valid only during the call. Names and values with escapes are unescaped into `scratch`.
    static func forEachMember(_ text: UnsafeRawBufferPointer, scratch: inout [UInt8],
                              _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer?) -> Void) throws(Malformed) {
        var p = Parser(text: text)
        p.skipSpace()
        try p.expect(UInt8(ascii: "{"))
        p.skipSpace()
        if p.peek == UInt8(ascii: "}") {
            p.i += 1
        } else {
            while true {
                p.skipSpace()
                let name = try p.string()
                p.skipSpace()
                try p.expect(UInt8(ascii: ":"))
                p.skipSpace()
                let value = try p.value()
                emit(text, name: name, value: value, scratch: &scratch, body)
                p.skipSpace()
                if p.peek == UInt8(ascii: ",") { p.i += 1; continue }
                try p.expect(UInt8(ascii: "}"))
                break
            }
        }
        p.skipSpace()
        if p.i != text.count { throw Malformed(offset: p.i, reason: "text after the object") }
    }

    /// Where a member's name or value lies in the text, and whether it needs unescaping.
    struct Token {
        var range: Range<Int>
        var escaped: Bool
    }

    private static func emit(_ text: UnsafeRawBufferPointer, name: Token, value: Token?, scratch: inout [UInt8],
                             _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer?) -> Void) {
        if !name.escaped && !(value?.escaped ?? false) {
            body(UnsafeRawBufferPointer(rebasing: text[name.range]), value.map { UnsafeRawBufferPointer(rebasing: text[$0.range]) })
            return
        }
        scratch.removeAll(keepingCapacity: true)
        let nameRange = append(text, name, to: &scratch)
        let valueRange = value.map { append(text, $0, to: &scratch) }
        scratch.withUnsafeBytes { s in
            body(UnsafeRawBufferPointer(rebasing: s[nameRange]), valueRange.map { UnsafeRawBufferPointer(rebasing: s[$0]) })
        }
    }

    private static func append(_ text: UnsafeRawBufferPointer, _ token: Token, to out: inout [UInt8]) -> Range<Int> {
        let start = out.count
        if !token.escaped {
            out.append(contentsOf: text[token.range])
            return start..<out.count
        }
        var i = token.range.lowerBound
        let end = token.range.upperBound
        while i < end {
            let c = text[i]
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            let e = text[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = hex4(text, i)
                i += 4
                if (0xD800..<0xDC00).contains(scalar), i + 6 <= end, text[i] == UInt8(ascii: "\\"), text[i + 1] == UInt8(ascii: "u") {
                    let low = hex4(text, i + 2)
                    if (0xDC00..<0xE000).contains(low) {
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        i += 6
                    }
                }
                appendUTF8(Unicode.Scalar(scalar) ?? "\u{FFFD}", to: &out)
            default: out.append(e)  // \" \\ \/
            }
        }
        return start..<out.count
    }

    /// The value of four hex digits the parser has already checked.
    private static func hex4(_ text: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        var v: UInt32 = 0
        for k in at..<at + 4 { v = v << 4 | UInt32(hexValue(text[k])!) }
        return v
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private static func appendUTF8(_ scalar: Unicode.Scalar, to out: inout [UInt8]) {
        out.append(contentsOf: UTF8.encode(scalar)!)
    }

    struct Parser {
        let text: UnsafeRawBufferPointer
        var i = 0

        var peek: UInt8? { i < text.count ? text[i] : nil }

        mutating func skipSpace() {
            while i < text.count, text[i] == 0x20 || text[i] == 0x0A || text[i] == 0x09 || text[i] == 0x0D { i += 1 }
        }

        mutating func expect(_ c: UInt8) throws(Malformed) {
            guard peek == c else { throw Malformed(offset: i, reason: "expected '\(Character(Unicode.Scalar(c)))'") }
            i += 1
        }

        /// A string token: the range inside the quotes.
        mutating func string() throws(Malformed) -> Token {
            try expect(UInt8(ascii: "\""))
            let start = i
            var escaped = false
            while i < text.count {
                let c = text[i]
                if c == UInt8(ascii: "\"") {
                    defer { i += 1 }
                    return Token(range: start..<i, escaped: escaped)
                }
                if c == UInt8(ascii: "\\") {
                    escaped = true
                    guard i + 1 < text.count else { break }
                    if text[i + 1] == UInt8(ascii: "u") {
                        guard i + 6 <= text.count, (2..<6).allSatisfy({ HeaderJSON.hexValue(text[i + $0]) != nil }) else {
                            throw Malformed(offset: i, reason: "bad \\u escape")
                        }
                        i += 6
                    } else {
                        guard "\"\\/bfnrt".utf8.contains(text[i + 1]) else { throw Malformed(offset: i, reason: "bad escape") }
                        i += 2
                    }
                    continue
                }
                i += 1
            }
            throw Malformed(offset: start, reason: "unterminated string")
        }

        /// A member's value: a string token, nil for `null`, or the raw text of any other value.
        mutating func value() throws(Malformed) -> Token? {
            guard let c = peek else { throw Malformed(offset: i, reason: "missing value") }
            if c == UInt8(ascii: "\"") { return try string() }
            let start = i
            var depth = 0
            while i < text.count {
                let c = text[i]
                if c == UInt8(ascii: "\"") {
                    _ = try string()
                    continue
                }
                if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
                    depth += 1
                } else if c == UInt8(ascii: "}") || c == UInt8(ascii: "]") {
                    if depth == 0 { break }
                    depth -= 1
                } else if c == UInt8(ascii: ","), depth == 0 {
                    break
                }
                i += 1
            }
            if depth != 0 { throw Malformed(offset: start, reason: "unterminated value") }
            var end = i
            while end > start, [0x20, 0x0A, 0x09, 0x0D].contains(text[end - 1]) { end -= 1 }
            if end == start { throw Malformed(offset: start, reason: "missing value") }
            let raw = UnsafeRawBufferPointer(rebasing: text[start..<end])
            if raw.elementsEqual("null".utf8) { return nil }
            return Token(range: start..<end, escaped: false)
        }
    }
}
