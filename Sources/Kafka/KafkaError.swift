import CKafka

/// An error from librdkafka or the broker, with librdkafka's error code kept.
///
/// The description never contains message payloads or configuration values (SASL passwords).
public struct KafkaError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Which part of the client failed.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: String, Sendable { case configuration, unsupportedVersion, produce, delivery, client, admin, consume }
        fileprivate let base: Base
        private init(_ base: Base) { self.base = base }
        /// A property was rejected by librdkafka.
        public static let configuration = Code(.configuration)
        /// The linked librdkafka is too old.
        public static let unsupportedVersion = Code(.unsupportedVersion)
        /// `rd_kafka_produceva` refused the message synchronously.
        public static let produce = Code(.produce)
        /// A delivery report carried an error.
        public static let delivery = Code(.delivery)
        /// A client-level error event (broker down, fatal idempotence error, …).
        public static let client = Code(.client)
        /// An admin request failed.
        public static let admin = Code(.admin)
        /// A consumer request failed.
        public static let consume = Code(.consume)
        public var description: String { base.rawValue }
    }

    public let code: Code
    /// The raw `rd_kafka_resp_err_t` value (0 when not applicable).
    public let errorCode: Int32
    /// True when librdkafka flagged the instance as fatally failed (needs re-creation).
    public let isFatal: Bool
    public let message: String

    public init(_ code: Code, errorCode: Int32 = 0, isFatal: Bool = false, message: String) {
        self.code = code
        self.errorCode = errorCode
        self.isFatal = isFatal
        self.message = message
    }

    init(_ code: Code, _ err: rd_kafka_resp_err_t, isFatal: Bool = false, detail: String? = nil) {
        self.init(code, errorCode: err.rawValue, isFatal: isFatal,
                  message: detail ?? String(cString: rd_kafka_err2str(err)))
    }

    /// librdkafka's symbolic name, e.g. `MSG_SIZE_TOO_LARGE` or `_MSG_TIMED_OUT`.
    public var name: String {
        String(cString: rd_kafka_err2name(rd_kafka_resp_err_t(rawValue: errorCode)))
    }

    public var description: String {
        errorCode == 0 ? "\(code): \(message)" : "\(code): \(message) [\(name)]"
    }
}

/// librdkafka error codes this project reacts to, by name.
public enum KafkaErrorCode {
    public static let queueFull = RD_KAFKA_RESP_ERR__QUEUE_FULL.rawValue
    public static let messageTimedOut = RD_KAFKA_RESP_ERR__MSG_TIMED_OUT.rawValue
    public static let messageSizeTooLarge = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE.rawValue
    public static let invalidRecord = RD_KAFKA_RESP_ERR_INVALID_RECORD.rawValue
    public static let corruptMessage = RD_KAFKA_RESP_ERR_INVALID_MSG.rawValue
    public static let recordListTooLarge = RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE.rawValue
    public static let invalidTopic = RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION.rawValue
    public static let unknownPartition = RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION.rawValue
    public static let unknownTopic = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC.rawValue
    public static let unknownTopicOrPartition = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART.rawValue
    public static let policyViolation = RD_KAFKA_RESP_ERR_POLICY_VIOLATION.rawValue
    public static let invalidTimestamp = RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP.rawValue
    public static let topicAuthorizationFailed = RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED.rawValue
    public static let clusterAuthorizationFailed = RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED.rawValue
    public static let purgeQueue = RD_KAFKA_RESP_ERR__PURGE_QUEUE.rawValue
    public static let purgeInflight = RD_KAFKA_RESP_ERR__PURGE_INFLIGHT.rawValue
    public static let producerFenced = RD_KAFKA_RESP_ERR_PRODUCER_FENCED.rawValue
    public static let invalidProducerEpoch = RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH.rawValue
    public static let unknownProducerId = RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID.rawValue
    public static let outOfOrderSequence = RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER.rawValue
    public static let fatal = RD_KAFKA_RESP_ERR__FATAL.rawValue
    public static let allBrokersDown = RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN.rawValue
    public static let transport = RD_KAFKA_RESP_ERR__TRANSPORT.rawValue
    public static let invalidArgument = RD_KAFKA_RESP_ERR__INVALID_ARG.rawValue
    public static let throttlingQuotaExceeded = RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED.rawValue
}

/// The linked librdkafka.
public enum Librdkafka {
    /// Oldest supported version: 2.0.x mis-skips KIP-482 tagged fields in ApiVersionResponse
    /// (fixed in 2.2.0, librdkafka PR #4278), so it cannot even connect to current brokers.
    public static let minimumVersion: Int32 = 0x0202_00ff
    public static var version: Int32 { rd_kafka_version() }
    public static var versionString: String { String(cString: rd_kafka_version_str()) }

    /// Throws when the linked librdkafka is older than 2.2.0, naming the reason.
    public static func checkVersion(_ version: Int32 = Librdkafka.version, versionString: String = Librdkafka.versionString) throws(KafkaError) {
        if version < minimumVersion {
            throw KafkaError(.unsupportedVersion, message:
                "librdkafka \(versionString) is too old: 2.2.0 or newer is required (librdkafka before 2.2 mis-parses " +
                "KIP-482 tagged fields in ApiVersionResponse and fails with 'Read underflow' against current brokers); " +
                "run scripts/bootstrap to build a recent librdkafka into /usr/local")
        }
    }
}

/// Text from a NUL-terminated librdkafka error buffer.
func errorText(_ buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
