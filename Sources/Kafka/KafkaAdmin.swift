import CKafka
import Foundation

/// Small administrative requests: topic creation and partition counts.
public enum KafkaAdmin {
    /// Creates `topic` with `partitions` partitions; an existing topic is not an error.
    public static func createTopic(_ topic: String, partitions: Int32, replicationFactor: Int32 = 1,
                                   configuration: KafkaConfiguration, timeoutMilliseconds: Int32 = 10_000) throws(KafkaError) {
        let rk = try makeClient(configuration)
        defer { rd_kafka_destroy(rk) }
        var errstr = [CChar](repeating: 0, count: 512)
        guard let newTopic = rd_kafka_NewTopic_new(topic, partitions, replicationFactor, &errstr, errstr.count) else {
            throw KafkaError(.admin, message: "invalid topic request: \(errorText(errstr))")
        }
        defer { rd_kafka_NewTopic_destroy(newTopic) }
        let queue = rd_kafka_queue_new(rk)!
        defer { rd_kafka_queue_destroy(queue) }
        var topics: [OpaquePointer?] = [newTopic]
        rd_kafka_CreateTopics(rk, &topics, 1, nil, queue)
        guard let event = rd_kafka_queue_poll(queue, timeoutMilliseconds) else {
            throw KafkaError(.admin, message: "CreateTopics timed out")
        }
        defer { rd_kafka_event_destroy(event) }
        if rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(.admin, rd_kafka_event_error(event), detail: String(cString: rd_kafka_event_error_string(event)))
        }
        guard let result = rd_kafka_event_CreateTopics_result(event) else { return }
        var count = 0
        guard let results = rd_kafka_CreateTopics_result_topics(result, &count) else { return }
        for i in 0..<count {
            let err = rd_kafka_topic_result_error(results[i])
            if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS {
                let text = rd_kafka_topic_result_error_string(results[i]).map { String(cString: $0) } ?? ""
                throw KafkaError(.admin, err, detail: "cannot create topic \(topic): \(text)")
            }
        }
    }

    /// The number of partitions of `topic` from cluster metadata.
    public static func partitionCount(_ topic: String, configuration: KafkaConfiguration,
                                      timeoutMilliseconds: Int32 = 10_000) throws(KafkaError) -> Int32 {
        let rk = try makeClient(configuration)
        defer { rd_kafka_destroy(rk) }
        return try partitionCount(rk, topic, timeoutMilliseconds)
    }

    static func partitionCount(_ rk: OpaquePointer, _ topic: String, _ timeoutMilliseconds: Int32) throws(KafkaError) -> Int32 {
        guard let rkt = rd_kafka_topic_new(rk, topic, nil) else {
            throw KafkaError(.admin, message: "invalid topic name")
        }
        defer { rd_kafka_topic_destroy(rkt) }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let err = rd_kafka_metadata(rk, 0, rkt, &metadata, timeoutMilliseconds)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let md = metadata else {
            throw KafkaError(.admin, err, detail: "metadata request for \(topic) failed: \(String(cString: rd_kafka_err2str(err)))")
        }
        defer { rd_kafka_metadata_destroy(md) }
        guard md.pointee.topic_cnt > 0 else { throw KafkaError(.admin, message: "topic \(topic) not in metadata") }
        let t = md.pointee.topics[0]
        if t.err != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(.admin, t.err, detail: "topic \(topic): \(String(cString: rd_kafka_err2str(t.err)))")
        }
        return t.partition_cnt
    }

    static func makeClient(_ configuration: KafkaConfiguration, type: rd_kafka_type_t = RD_KAFKA_PRODUCER) throws(KafkaError) -> OpaquePointer {
        try Librdkafka.checkVersion()
        let conf = try configuration.makeConf()
        var errstr = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(type, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(.configuration, message: "cannot create client: \(errorText(errstr))")
        }
        return rk
    }
}
