/// JSON text without insignificant whitespace: PostgreSQL prints `jsonb` as `{"a": 1, "b": [1, 2]}`,
/// Kafka Connect's JsonConverter writes `{"a":1,"b":[1,2]}`. Whitespace inside strings (and
/// after an escaped quote) is kept; the input is assumed to be JSON.
enum JSONText {
    static func compact(_ text: UnsafeRawBufferPointer) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var inString = false
        var escaped = false
        for b in text {
            if inString {
                out.append(b)
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
            } else if b == UInt8(ascii: " ") || b == UInt8(ascii: "\n") || b == UInt8(ascii: "\t") || b == UInt8(ascii: "\r") {
                continue
            } else {
                if b == UInt8(ascii: "\"") { inString = true }
                out.append(b)
            }
        }
        return out
    }
}
