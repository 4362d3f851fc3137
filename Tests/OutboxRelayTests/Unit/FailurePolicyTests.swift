import Kafka
import OutboxRelay
import Testing

/// Every row of the failure classification, and the policy's decisions, without I/O.
@Suite struct FailurePolicyTests {
    static let badRow: [Int32] = [KafkaErrorCode.messageSizeTooLarge, KafkaErrorCode.recordListTooLarge, KafkaErrorCode.invalidRecord,
                                  KafkaErrorCode.corruptMessage, KafkaErrorCode.invalidTopic, KafkaErrorCode.unknownPartition,
                                  KafkaErrorCode.policyViolation, KafkaErrorCode.invalidTimestamp, KafkaErrorCode.invalidArgument]
    static let ambiguous: [Int32] = [KafkaErrorCode.messageTimedOut, KafkaErrorCode.purgeQueue, KafkaErrorCode.purgeInflight,
                                     KafkaErrorCode.producerFenced, KafkaErrorCode.invalidProducerEpoch, KafkaErrorCode.unknownProducerId,
                                     KafkaErrorCode.outOfOrderSequence, KafkaErrorCode.fatal]
    static let environment: [Int32] = [KafkaErrorCode.topicAuthorizationFailed, KafkaErrorCode.clusterAuthorizationFailed,
                                       KafkaErrorCode.unknownTopic, KafkaErrorCode.unknownTopicOrPartition, KafkaErrorCode.allBrokersDown,
                                       KafkaErrorCode.transport, KafkaErrorCode.queueFull, KafkaErrorCode.throttlingQuotaExceeded]

    static func error(_ code: Int32, fatal: Bool = false, produce: Bool = false) -> KafkaError {
        KafkaError(produce ? .produce : .delivery, errorCode: code, isFatal: fatal, message: "code \(code)")
    }

    @Test(arguments: badRow)
    func aBadRowIsBadUnlessItMayBeInTheLog(code: Int32) {
        #expect(FailureClass.classify(Self.error(code), persistence: .notPersisted) == .badRow)
        #expect(FailureClass.classify(Self.error(code), persistence: .persisted) == .badRow)
        #expect(FailureClass.classify(Self.error(code), persistence: .possiblyPersisted) == .ambiguous,
                "a message possibly in the log must never be dead-lettered")
    }

    @Test(arguments: ambiguous)
    func ambiguousFailuresAreAmbiguousWhateverTheStatus(code: Int32) {
        for p in [DeliveryReport.Persistence.notPersisted, .possiblyPersisted, .persisted] {
            #expect(FailureClass.classify(Self.error(code), persistence: p) == .ambiguous)
        }
    }

    @Test(arguments: environment)
    func environmentFailuresBlameTheEnvironment(code: Int32) {
        #expect(FailureClass.classify(Self.error(code), persistence: .notPersisted) == .environment)
        #expect(FailureClass.classify(Self.error(code), persistence: .possiblyPersisted) == .ambiguous)
    }

    @Test func unknownCodesAreEnvironmentUnlessFatalOrPossiblyPersisted() {
        #expect(FailureClass.classify(Self.error(9999)) == .environment)
        #expect(FailureClass.classify(Self.error(9999, fatal: true)) == .ambiguous)
        #expect(FailureClass.classify(Self.error(9999), persistence: .possiblyPersisted) == .ambiguous)
    }

    @Test func aPurgeIsAWithdrawalOnlyWhileTheProducerIsWithdrawn() {
        for code in [KafkaErrorCode.purgeQueue, KafkaErrorCode.purgeInflight, KafkaErrorCode.fatal] {
            #expect(FailurePolicy.classify(.init(error: Self.error(code), persistence: .notPersisted, producerWithdrawn: true)) == nil)
            #expect(FailurePolicy.classify(.init(error: Self.error(code), persistence: .notPersisted)) == .ambiguous)
        }
        #expect(FailurePolicy.classify(.init(error: Self.error(KafkaErrorCode.messageTimedOut), persistence: .notPersisted,
                                             producerWithdrawn: true)) == .ambiguous, "a timeout is a failure even then")
    }

    @Test func environmentFailuresNeverCountAndRepeatsCountOnlyAfterTheTopicDelivered() {
        #expect(!FailurePolicy.counts(.environment, previousFailureAt: nil, topicLastSuccessAt: nil))
        #expect(FailurePolicy.counts(.ambiguous, previousFailureAt: nil, topicLastSuccessAt: nil), "a first failure counts")
        #expect(!FailurePolicy.counts(.ambiguous, previousFailureAt: 10, topicLastSuccessAt: 5), "nothing delivered since: the environment")
        #expect(!FailurePolicy.counts(.badRow, previousFailureAt: 10, topicLastSuccessAt: nil))
        #expect(FailurePolicy.counts(.badRow, previousFailureAt: 10, topicLastSuccessAt: 11))
    }

    let policy = FailurePolicy(maxAttempts: 3, backoffBase: 0.1, backoffCap: 1)

    func history(_ counted: Int, strikes: Int = 0) -> RetryBook.RowHistory {
        var h = RetryBook.RowHistory()
        h.countedAttempts = counted
        h.badRowStrikes = strikes
        return h
    }

    @Test func aBadRowIsProbedAloneOnceThenDeadLettered() {
        let e = Self.error(KafkaErrorCode.messageSizeTooLarge)
        #expect(policy.action(.badRow, error: e, history: history(1, strikes: 1), environmentFailures: 0, jitter: 1) == .probeAlone)
        guard case .deadLetter(let reason) = policy.action(.badRow, error: e, history: history(2, strikes: 2), environmentFailures: 0, jitter: 1) else {
            Issue.record("a second bad-row strike must dead-letter"); return
        }
        #expect(reason.hasPrefix("bad row: "))
        let refused = Self.error(KafkaErrorCode.messageSizeTooLarge, produce: true)
        #expect(policy.action(.badRow, error: refused, history: history(1, strikes: 1), environmentFailures: 0, jitter: 1)
                == .deadLetter(reason: "bad row: \(refused.message)"), "a synchronous refusal is exact: at once")
    }

    @Test func retriesBackOffExponentiallyUpToTheCapAndGiveUpAtMaxAttempts() {
        let e = Self.error(KafkaErrorCode.messageTimedOut)
        #expect(policy.action(.ambiguous, error: e, history: history(1), environmentFailures: 0, jitter: 1) == .retry(after: 0.1))
        #expect(policy.action(.ambiguous, error: e, history: history(2), environmentFailures: 0, jitter: 1.2) == .retry(after: 0.2 * 1.2))
        #expect(policy.action(.ambiguous, error: e, history: history(3), environmentFailures: 0, jitter: 1)
                == .deadLetter(reason: "gave up after 3 attempts: \(e.message)"))
        let capped = FailurePolicy(maxAttempts: 100, backoffBase: 0.1, backoffCap: 1)
        #expect(capped.action(.ambiguous, error: e, history: history(40), environmentFailures: 0, jitter: 1) == .retry(after: 1))
    }

    @Test func environmentFailuresNeverDeadLetterButLengthenTheBackOff() {
        let e = Self.error(KafkaErrorCode.topicAuthorizationFailed)
        #expect(policy.action(.environment, error: e, history: history(0), environmentFailures: 0, jitter: 1) == .retry(after: 0.1))
        #expect(policy.action(.environment, error: e, history: history(0), environmentFailures: 3, jitter: 1) == .retry(after: 0.8))
        #expect(policy.action(.environment, error: e, history: history(0), environmentFailures: 50, jitter: 1) == .retry(after: 1))
    }
}
