import CKafka
import Foundation

/// librdkafka properties by their librdkafka names, applied in order (later wins).
public struct KafkaConfiguration: Sendable, Equatable {
    public private(set) var properties: [(key: String, value: String)] = []

    public init(_ properties: [(String, String)] = []) {
        for (k, v) in properties { set(k, v) }
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.properties.map { "\($0.key)=\($0.value)" } == b.properties.map { "\($0.key)=\($0.value)" }
    }

    public mutating func set(_ key: String, _ value: String) {
        properties.removeAll { $0.key == key }
        properties.append((key, value))
    }

    public subscript(key: String) -> String? {
        properties.last { $0.key == key }?.value
    }

    /// True for properties whose values must never be printed.
    public static func isSecret(_ key: String) -> Bool {
        let k = key.lowercased()
        return ["password", "secret", "jaas", "token", ".pem", "keystore"].contains { k.contains($0) }
    }

    /// Builds an `rd_kafka_conf_t`; a rejected property throws with librdkafka's own text and the
    /// property name (never its value).
    func makeConf() throws(KafkaError) -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        var errstr = [CChar](repeating: 0, count: 512)
        for (key, value) in properties {
            let result = rd_kafka_conf_set(conf, key, value, &errstr, errstr.count)
            if result != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                var text = errorText(errstr)
                if Self.isSecret(key), !value.isEmpty { text = text.replacingOccurrences(of: value, with: "***") }
                throw KafkaError(.configuration, message: "librdkafka property \"\(key)\" rejected: \(text)")
            }
        }
        return conf
    }

    /// Checks every property against librdkafka without creating a client.
    public func validate() throws(KafkaError) {
        let conf = try makeConf()
        rd_kafka_conf_destroy(conf)
    }

    /// Whether librdkafka knows a property of this name (whatever its value would be).
    public static func isKnownProperty(_ name: String) -> Bool {
        guard let conf = rd_kafka_conf_new() else { return false }
        defer { rd_kafka_conf_destroy(conf) }
        var errstr = [CChar](repeating: 0, count: 256)
        return rd_kafka_conf_set(conf, name, "", &errstr, errstr.count) != RD_KAFKA_CONF_UNKNOWN
    }
}
