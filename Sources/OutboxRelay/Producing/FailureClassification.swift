import Kafka

/// What a failed delivery (or a refused produce) says about the row — decided in this one place.
public enum FailureClass: String, Sendable, Equatable {
    /// The row itself cannot be produced (oversized, invalid record or topic name, unknown
    /// partition, policy violation): dead-letter it.
    case badRow = "bad_row"
    /// The environment is at fault (authorization, unknown topic with auto-create off, broker
    /// unreachable): keep the row, back off, report degraded. Never dead-lettered for this.
    case environment
    /// The broker may or may not have the message (timed out, purged in flight, producer fenced):
    /// keep the row; re-sending it is the bounded duplicate.
    case ambiguous

    /// Classifies by librdkafka error code and message status. librdkafka's own retriable errors
    /// never get here: with idempotence it retries them internally until `message.timeout.ms`.
    public static func classify(_ error: KafkaError, persistence: DeliveryReport.Persistence = .notPersisted) -> FailureClass {
        let code = error.errorCode
        switch code {
        case KafkaErrorCode.messageSizeTooLarge, KafkaErrorCode.recordListTooLarge, KafkaErrorCode.invalidRecord,
             KafkaErrorCode.corruptMessage, KafkaErrorCode.invalidTopic, KafkaErrorCode.unknownPartition,
             KafkaErrorCode.policyViolation, KafkaErrorCode.invalidTimestamp, KafkaErrorCode.invalidArgument:
            // A message that may already be in the log is never "bad": it must not be both
            // dead-lettered and delivered.
            return persistence == .possiblyPersisted ? .ambiguous : .badRow
        case KafkaErrorCode.messageTimedOut, KafkaErrorCode.purgeQueue, KafkaErrorCode.purgeInflight,
             KafkaErrorCode.producerFenced, KafkaErrorCode.invalidProducerEpoch, KafkaErrorCode.unknownProducerId,
             KafkaErrorCode.outOfOrderSequence, KafkaErrorCode.fatal:
            return .ambiguous
        case KafkaErrorCode.topicAuthorizationFailed, KafkaErrorCode.clusterAuthorizationFailed,
             KafkaErrorCode.unknownTopic, KafkaErrorCode.unknownTopicOrPartition, KafkaErrorCode.allBrokersDown,
             KafkaErrorCode.transport, KafkaErrorCode.queueFull, KafkaErrorCode.throttlingQuotaExceeded:
            return persistence == .possiblyPersisted ? .ambiguous : .environment
        default:
            if error.isFatal || persistence == .possiblyPersisted { return .ambiguous }
            return .environment
        }
    }
}
