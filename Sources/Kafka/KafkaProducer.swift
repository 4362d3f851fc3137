import CKafka
import Foundation
import Synchronization

/// An idempotent librdkafka producer whose owner takes its delivery reports when told they wait.
///
/// Reports (DR, ERROR and LOG events) wait on librdkafka's main event queue. When that queue goes
/// from empty to non-empty, librdkafka calls `onReady` from the thread that queued the event (a
/// broker thread), and the owner takes everything queued with ``takeEvents()``, on its own
/// thread. There is no poller thread in between: each report batch used to wake a thread of ours
/// blocked in `rd_kafka_queue_poll` only for it to hand the batch on to the relay's thread
/// (docs/BENCHMARKS.md: cross-thread wake-ups were most of the relay's CPU per row of a
/// trickle). One event may carry many reports; they are handed over as one batch.
///
/// - Important: never call `rd_kafka_poll` on this handle: with EVENT_DR enabled it would
///   swallow delivery reports. And take the events: with EVENT_DR, `rd_kafka_flush` waits until
///   they are taken.
public final class KafkaProducer: @unchecked Sendable {
    /// What ``takeEvents()`` hands over.
    public enum Event: Sendable {
        case deliveryReports([DeliveryReport])
        case error(KafkaError)
        /// One of librdkafka's own log lines (syslog level 0–7, facility such as `CONFWARN`),
        /// routed here instead of librdkafka printing it to stderr, so it goes through the
        /// application's logger (format, level, redaction).
        case log(level: Int32, facility: String, message: String)
    }

    fileprivate let handle: OpaquePointer
    private let queue: OpaquePointer
    /// This instance's broker connections (CKafka's socket callbacks): each socket closes with a
    /// reset, and ``abortConnections()`` resets them all at once. Freed after `rd_kafka_destroy`,
    /// which closes sockets through it.
    private let sockets: UnsafeMutablePointer<outbox_socket_ledger>
    /// Where acknowledgements are timed (kept alive as long as librdkafka may call into it).
    private let ackLatency: AckLatency?
    private let topics = Mutex<TopicHandles>(TopicHandles())

    /// librdkafka topic handles by name, with the last one looked up kept aside: consecutive
    /// messages nearly always go to the same topic, and comparing a name that shares its
    /// storage with the last one is cheaper than hashing it.
    struct TopicHandles {
        var byName: [String: OpaquePointer] = [:]
        var lastName = ""
        var lastHandle: OpaquePointer?
    }
    private let closed = Atomic<Bool>(false)
    /// What librdkafka's queue callback calls (retained until `close`).
    private let ready: ReadyCallback
    /// The producer's one worker for blocking metadata requests (readiness probes, refreshes):
    /// a serial queue it owns, so a heartbeat's probe neither starts an OS thread nor holds a
    /// thread of the cooperative pool while librdkafka waits for a broker.
    let metadataQueue = DispatchQueue(label: "kafka-metadata")
    /// Threads using the handle besides the producing one (metadata probes, taking events);
    /// `close` waits for them.
    private let users = Mutex<(count: Int, closing: Bool)>((0, false))

    /// Runs `body` with the handle unless the producer is closing; `close` waits for it.
    fileprivate func withHandle(_ body: (OpaquePointer) -> Void) -> Bool {
        let ok = users.withLock { u -> Bool in
            if u.closing { return false }
            u.count += 1
            return true
        }
        guard ok else { return false }
        body(handle)
        users.withLock { $0.count -= 1 }
        return true
    }

    /// Creates the producer. `configuration` is applied on top of the relay's required settings
    /// only where the caller put them; this type sets the event mask and nothing else. Every
    /// acknowledgement's produce → acknowledgement latency goes into `ackLatency` if given.
    public init(configuration: KafkaConfiguration, ackLatency: AckLatency? = nil,
                onReady: @escaping @Sendable () -> Void) throws(KafkaError) {
        try Librdkafka.checkVersion()
        var configuration = configuration
        // librdkafka's log lines wait on a queue (also those of rd_kafka_new itself) until the
        // owner takes them as events, instead of going to stderr from librdkafka's own threads.
        configuration.set("log.queue", "true")
        let conf = try configuration.makeConf()
        rd_kafka_conf_set_events(conf, Int32(RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG))
        guard let ledger = outbox_socket_ledger_new() else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(.configuration, message: "cannot create producer: out of memory")
        }
        outbox_conf_set_socket_ledger(conf, ledger)
        if let ackLatency, outbox_conf_set_ack_latency(conf, ackLatency.histogram) != RD_KAFKA_RESP_ERR_NO_ERROR {
            rd_kafka_conf_destroy(conf)
            outbox_socket_ledger_free(ledger)
            throw KafkaError(.configuration, message: "cannot create producer: the acknowledgement interceptor was refused")
        }
        var errstr = [CChar](repeating: 0, count: 512)
        // rd_kafka_new takes ownership of conf on success only.
        guard let rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            outbox_socket_ledger_free(ledger)
            throw KafkaError(.configuration, message: "cannot create producer: \(errorText(errstr))")
        }
        sockets = ledger
        self.ackLatency = ackLatency
        handle = rk
        queue = rd_kafka_queue_get_main(rk)
        _ = rd_kafka_set_log_queue(rk, queue)
        ready = ReadyCallback(onReady)
        // Called under the queue's lock on a librdkafka thread: it must not call librdkafka nor
        // block. The owner's signal only resumes a waiting task.
        rd_kafka_queue_cb_event_enable(queue, { _, opaque in
            guard let opaque else { return }
            Unmanaged<ReadyCallback>.fromOpaque(opaque).takeUnretainedValue().call()
        }, Unmanaged.passUnretained(ready).toOpaque())
        // Events queued before the callback was set (rd_kafka_new's own log lines) made the queue
        // non-empty already: no callback would announce them.
        onReady()
    }

    deinit { close() }

    // MARK: Producing

    /// Enqueues one message (non-blocking). `opaque` must be non-zero; it comes back in the report.
    ///
    /// Throws synchronously for QUEUE_FULL (the caller's window should prevent it), an oversized
    /// message, an unknown partition/topic or a fatal producer.
    public func produce(_ message: KafkaMessage, opaque: UInt64) throws(KafkaError) {
        precondition(opaque != 0, "opaque must be non-zero")
        let rkt = try topicHandle(message.topic)
        let count = 3 + (message.key == nil ? 0 : 1) + (message.value == nil ? 0 : 1) + message.headers.count
        let failure: KafkaError? = message.storage.withUnsafeBytes { raw -> KafkaError? in
            // A valid pointer for zero-length fields even when storage is empty.
            var zero: UInt8 = 0
            return withUnsafeMutablePointer(to: &zero) { zeroPointer -> KafkaError? in
                let base = raw.baseAddress ?? UnsafeRawPointer(zeroPointer)
                return withUnsafeTemporaryAllocation(of: rd_kafka_vu_t.self, capacity: count) { vus -> KafkaError? in
                    var i = 0
                    func add(_ v: rd_kafka_vu_t) { vus.initializeElement(at: i, to: v); i += 1 }
                    var v = rd_kafka_vu_t()
                    v.vtype = RD_KAFKA_VTYPE_RKT; v.u.rkt = rkt; add(v)
                    v = rd_kafka_vu_t(); v.vtype = RD_KAFKA_VTYPE_MSGFLAGS; v.u.i = Int32(outbox_rd_kafka_msg_f_copy); add(v)
                    v = rd_kafka_vu_t(); v.vtype = RD_KAFKA_VTYPE_OPAQUE
                    v.u.ptr = UnsafeMutableRawPointer(bitPattern: UInt(opaque)); add(v)
                    if let key = message.key {
                        v = rd_kafka_vu_t(); v.vtype = RD_KAFKA_VTYPE_KEY
                        v.u.mem.ptr = UnsafeMutableRawPointer(mutating: base + key.lowerBound)
                        v.u.mem.size = key.count; add(v)
                    }
                    if let value = message.value {
                        v = rd_kafka_vu_t(); v.vtype = RD_KAFKA_VTYPE_VALUE
                        v.u.mem.ptr = UnsafeMutableRawPointer(mutating: base + value.lowerBound)
                        v.u.mem.size = value.count; add(v)
                    }
                    for h in message.headers {
                        v = rd_kafka_vu_t(); v.vtype = RD_KAFKA_VTYPE_HEADER
                        v.u.header.name = (base + h.name.lowerBound).assumingMemoryBound(to: CChar.self)
                        if let hv = h.value {
                            v.u.header.val = base + hv.lowerBound
                            v.u.header.size = hv.count
                        } else {
                            v.u.header.val = nil
                            v.u.header.size = 0
                        }
                        add(v)
                    }
                    defer { vus.baseAddress!.deinitialize(count: i) }
                    guard let error = rd_kafka_produceva(handle, vus.baseAddress, i) else { return nil }
                    defer { rd_kafka_error_destroy(error) }
                    return KafkaError(.produce, errorCode: rd_kafka_error_code(error).rawValue,
                                      isFatal: rd_kafka_error_is_fatal(error) != 0,
                                      message: String(cString: rd_kafka_error_string(error)))
                }
            }
        }
        if let failure { throw failure }
    }

    fileprivate func topicHandle(_ name: String) throws(KafkaError) -> OpaquePointer {
        let result: OpaquePointer? = topics.withLock { cache in
            if let last = cache.lastHandle, name == cache.lastName { return last }
            let t: OpaquePointer
            if let known = cache.byName[name] {
                t = known
            } else {
                guard let created = rd_kafka_topic_new(handle, name, nil) else { return nil }
                cache.byName[name] = created
                t = created
            }
            cache.lastName = name
            cache.lastHandle = t
            return t
        }
        guard let result else {
            throw KafkaError(.produce, errorCode: KafkaErrorCode.invalidArgument,
                             message: "invalid topic name (librdkafka refused a handle for it)")
        }
        return result
    }

    // MARK: State

    /// Messages librdkafka still holds (queued or in flight, reports not yet served).
    public var outstandingMessages: Int { Int(rd_kafka_outq_len(handle)) }

    /// The cause of a fatal error, when the instance has one (`rd_kafka_fatal_error`).
    public func fatalError() -> KafkaError? {
        var errstr = [CChar](repeating: 0, count: 512)
        let err = rd_kafka_fatal_error(handle, &errstr, errstr.count)
        guard err != RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
        return KafkaError(.client, errorCode: err.rawValue, isFatal: true, message: errorText(errstr))
    }

    /// Waits up to `timeoutMilliseconds` for every outstanding message to get its report; the
    /// owner must keep taking events meanwhile (on another thread). Returns false on timeout. Blocks the caller's thread.
    ///
    /// Nothing is purged on timeout: unacknowledged rows stay in the outbox and are relayed again.
    public func flush(timeoutMilliseconds: Int32) -> Bool {
        rd_kafka_flush(handle, timeoutMilliseconds) == RD_KAFKA_RESP_ERR_NO_ERROR
    }

    /// Stops the poller and destroys the instance. Messages still queued are discarded without
    /// reports (their rows remain in the outbox). Safe to call twice.
    public func close() {
        guard closed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        // Wait for metadata probes on other threads (each bounded by its timeout).
        users.withLock { $0.closing = true }
        while users.withLock({ $0.count }) > 0 { usleep(1_000) }
        // No callback after this returns: librdkafka calls it under the queue's lock, which
        // disabling takes too.
        rd_kafka_queue_cb_event_enable(queue, nil, nil)
        // Order matters: topic handles and queue references before the client.
        topics.withLock { cache in
            for (_, t) in cache.byName { rd_kafka_topic_destroy(t) }
            cache = TopicHandles()
        }
        rd_kafka_queue_destroy(queue)
        rd_kafka_destroy(handle)
        // Every socket is closed now (librdkafka's threads have ended).
        outbox_socket_ledger_free(sockets)
        ackLatency?.flushLog()
    }

    // MARK: Events

    /// Everything queued now (non-blocking), reports of one batch in order, each error after the
    /// reports queued before it. Returns nothing once the producer is closing. When it stops
    /// short (a very large backlog of events), it calls `onReady` again: librdkafka announces only
    /// a queue that was empty.
    public func takeEvents() -> [Event] {
        var events: [Event] = []
        var more = false
        _ = withHandle { _ in
            var reports: [DeliveryReport] = []
            reports.reserveCapacity(16)  // grown by appending: an exact reserve per event reallocated per event
            var taken = 0
            while let event = rd_kafka_queue_poll(queue, 0) {
                defer { rd_kafka_event_destroy(event) }
                taken += 1
                switch rd_kafka_event_type(event) {
                case RD_KAFKA_EVENT_DR:
                    while let m = rd_kafka_event_message_next(event) {
                        reports.append(Self.report(m))
                    }
                case RD_KAFKA_EVENT_ERROR:
                    // Reports before the error are handed over first, in order.
                    if !reports.isEmpty { events.append(.deliveryReports(reports)); reports = [] }
                    let err = rd_kafka_event_error(event)
                    let fatal = rd_kafka_event_error_is_fatal(event) != 0
                    var error = KafkaError(.client, errorCode: err.rawValue, isFatal: fatal,
                                           message: String(cString: rd_kafka_event_error_string(event)))
                    if fatal, let cause = fatalError() { error = cause }
                    events.append(.error(error))
                case RD_KAFKA_EVENT_LOG:
                    var facility: UnsafePointer<CChar>?
                    var text: UnsafePointer<CChar>?
                    var level: Int32 = 6
                    if rd_kafka_event_log(event, &facility, &text, &level) == 0 {
                        events.append(.log(level: level, facility: facility.map { String(cString: $0) } ?? "",
                                           message: text.map { String(cString: $0) } ?? ""))
                    }
                default:
                    break
                }
                if taken >= 256 || reports.count >= 20_000 {
                    more = true
                    break
                }
            }
            if !reports.isEmpty { events.append(.deliveryReports(reports)) }
        }
        if more { ready.call() }
        return events
    }

    private static func report(_ m: UnsafePointer<rd_kafka_message_t>) -> DeliveryReport {
        let opaque = UInt64(UInt(bitPattern: m.pointee._private))
        let persistence: DeliveryReport.Persistence
        switch rd_kafka_message_status(m) {
        case RD_KAFKA_MSG_STATUS_PERSISTED: persistence = .persisted
        case RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED: persistence = .possiblyPersisted
        default: persistence = .notPersisted
        }
        let err = m.pointee.err
        let error = err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(.delivery, err)
        return DeliveryReport(opaque: opaque, error: error, persistence: persistence,
                              partition: m.pointee.partition, offset: m.pointee.offset)
    }
}

extension KafkaProducer {
    /// Asks the cluster for `topic`'s metadata on the producer's metadata queue, refreshing librdkafka's
    /// cache. After a topic-level error (authorization, unknown topic) librdkafka otherwise keeps
    /// refusing the topic until its periodic refresh (`topic.metadata.refresh.interval.ms`).
    public func refreshMetadata(topic: String, timeoutMilliseconds: Int32 = 5_000) {
        guard let rkt = try? topicHandle(topic) else { return }
        let box = UncheckedBox(rkt)
        metadataQueue.async { [self] in
            _ = withHandle { handle in
                var metadata: UnsafePointer<rd_kafka_metadata>?
                if rd_kafka_metadata(handle, 0, box.value, &metadata, timeoutMilliseconds) == RD_KAFKA_RESP_ERR_NO_ERROR,
                   let metadata {
                    rd_kafka_metadata_destroy(metadata)
                }
            }
        }
    }
}

/// The owner's wake-up, kept alive for librdkafka's queue callback (an opaque pointer to it).
final class ReadyCallback: Sendable {
    let call: @Sendable () -> Void
    init(_ call: @escaping @Sendable () -> Void) { self.call = call }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

extension KafkaProducer {
    /// Asks a broker for cluster metadata (on the producer's metadata queue); nil when a broker
    /// answered within the timeout. Used for readiness: "connected to a broker".
    public func probe(timeoutMilliseconds: Int32 = 1_000) async -> KafkaError? {
        return await withCheckedContinuation { (c: CheckedContinuation<KafkaError?, Never>) in
            metadataQueue.async { [self] in
                var result: KafkaError? = KafkaError(.client, message: "producer closed")
                _ = withHandle { handle in
                    var metadata: UnsafePointer<rd_kafka_metadata>?
                    let err = rd_kafka_metadata(handle, 0, nil, &metadata, timeoutMilliseconds)
                    if let metadata { rd_kafka_metadata_destroy(metadata) }
                    result = err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(.client, err)
                }
                c.resume(returning: result)
            }
        }
    }
}

extension KafkaProducer {
    /// Resets every broker connection this instance has open, at once: bytes the kernel still
    /// holds for them (requests not yet sent or not yet acknowledged) are discarded, so nothing
    /// this instance wrote before can reach a broker later. librdkafka sees the connections fail
    /// and would reconnect; call it on an instance being abandoned, after ``purgeAll()``, so it
    /// has nothing left to send. Returns how many connections were reset.
    @discardableResult
    public func abortConnections() -> Int {
        var n = 0
        _ = withHandle { _ in n = Int(outbox_socket_ledger_abort(sockets)) }
        return n
    }

    /// Broker connections (sockets) this instance has open now.
    public var openConnections: Int {
        var n = 0
        _ = withHandle { _ in n = Int(outbox_socket_ledger_open(sockets)) }
        return n
    }
}

extension KafkaProducer {
    /// Drops every message this instance still holds — queued or in flight — so it cannot send
    /// them any more (their reports come back as purged). For abandoning a wedged producer whose
    /// rows are re-sent by a new one; never used to drop rows: they stay in the outbox.
    public func purgeAll() {
        _ = withHandle { rd_kafka_purge($0, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT | RD_KAFKA_PURGE_F_NON_BLOCKING)) }
    }
}

extension KafkaProducer {
    /// ``flush(timeoutMilliseconds:)`` on a thread of its own: `rd_kafka_flush` blocks, and an
    /// async caller must not hold a cooperative-pool thread (or an actor) meanwhile.
    public func flushAsync(timeoutMilliseconds: Int32) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let thread = Thread { [self] in c.resume(returning: flush(timeoutMilliseconds: timeoutMilliseconds)) }
            thread.name = "kafka-flush"
            thread.start()
        }
    }

    /// ``close()`` on a thread of its own (`rd_kafka_destroy` can block for a socket timeout when
    /// a broker is wedged); returns once the instance is destroyed and can send nothing more.
    public func closeAsync() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let thread = Thread { [self] in
                close()
                c.resume()
            }
            thread.name = "kafka-close"
            thread.start()
        }
    }
}
