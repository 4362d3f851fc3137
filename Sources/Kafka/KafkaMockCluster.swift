import CKafka

/// librdkafka's in-process mock cluster, for faults a real broker cannot stage on demand
/// (per-request error codes, brokers going down). Any client in this process can connect to
/// ``bootstrapServers``.
///
/// - Important: for tests only. The cluster lives as long as this object.
@_spi(Testing) public final class KafkaMockCluster: @unchecked Sendable {
    private let owner: OpaquePointer
    fileprivate let cluster: OpaquePointer

    /// Kafka API keys used with ``pushRequestErrors(api:_:)``.
    public enum API: Int16 { case produce = 0, fetch = 1, metadata = 3, initProducerId = 22 }

    public init(brokers: Int32 = 1) throws(KafkaError) {
        // The cluster needs a client instance to own its threads; a producer with no brokers.
        owner = try KafkaAdmin.makeClient(KafkaConfiguration([("log_level", "0")]))
        guard let c = rd_kafka_mock_cluster_new(owner, brokers) else {
            rd_kafka_destroy(owner)
            throw KafkaError(.client, message: "cannot create the mock cluster")
        }
        cluster = c
    }

    deinit {
        rd_kafka_mock_cluster_destroy(cluster)
        rd_kafka_destroy(owner)
    }

    public var bootstrapServers: String { String(cString: rd_kafka_mock_cluster_bootstraps(cluster)) }

    public func createTopic(_ topic: String, partitions: Int32) throws(KafkaError) {
        let err = rd_kafka_mock_topic_create(cluster, topic, partitions, 1)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(.admin, err) }
    }

    /// The next `errors.count` requests of `api` (to any broker) fail with these codes, in order.
    public func pushRequestErrors(api: API, _ errors: [Int32]) {
        let codes = errors.map { rd_kafka_resp_err_t(rawValue: $0) }
        codes.withUnsafeBufferPointer { rd_kafka_mock_push_request_errors_array(cluster, api.rawValue, codes.count, $0.baseAddress) }
    }

    public func setBrokerDown(_ broker: Int32 = 1) { _ = rd_kafka_mock_broker_set_down(cluster, broker) }
    public func setBrokerUp(_ broker: Int32 = 1) { _ = rd_kafka_mock_broker_set_up(cluster, broker) }
    /// Every response of `broker` is delayed by `milliseconds` (0 clears it): a slow or throttled
    /// broker (Kafka enforces produce quotas by delaying responses, not by refusing requests).
    public func setBrokerRoundTrip(_ milliseconds: Int32, broker: Int32 = 1) {
        _ = rd_kafka_mock_broker_set_rtt(cluster, broker, milliseconds)
    }
}

extension KafkaMockCluster {
    /// Metadata for `topic` reports `error` (0 clears it).
    public func setTopicError(_ topic: String, _ error: Int32) {
        rd_kafka_mock_topic_set_error(cluster, topic, rd_kafka_resp_err_t(rawValue: error))
    }
}
