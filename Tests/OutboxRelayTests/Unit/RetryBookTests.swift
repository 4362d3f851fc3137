import OutboxRelay
import Testing

@Suite struct RetryBookTests {
    let k = RetryBook.holdKey(topic: "t", key: Array("k".utf8), rowId: 1)
    let other = RetryBook.holdKey(topic: "t", key: Array("other".utf8), rowId: 9)

    @Test func aHeldKeyHoldsBackLaterRowsOfThatKeyOnly() {
        var book = RetryBook()
        book.hold(k, rowId: 5, until: 10)
        #expect(book.isHeld(k, rowId: 7))
        #expect(!book.isHeld(k, rowId: 4), "earlier rows of the key are not behind the failed one")
        #expect(!book.isHeld(other, rowId: 7))
        #expect(!book.isHeld(RetryBook.holdKey(topic: "u", key: Array("k".utf8), rowId: 7), rowId: 7), "the same key in another topic")
    }

    @Test func aSecondFailureOfTheKeyKeepsTheLowestRowAndTheLatestTime() {
        var book = RetryBook()
        book.hold(k, rowId: 8, until: 10)
        book.hold(k, rowId: 5, until: 12)
        #expect(book.releaseDue(now: 11) == nil)
        #expect(book.releaseDue(now: 12) == 5)
        #expect(book.isEmpty)
    }

    @Test func aDueHoldWaitsWhileRowsOfItsKeyAwaitTheirReports() {
        var book = RetryBook()
        book.hold(k, rowId: 5, until: 1)
        book.hold(other, rowId: 9, until: 1)
        // Row 6 of key k was produced before row 5 failed and has not been reported yet.
        #expect(book.releaseDue(now: 2, recheck: 0.5, busy: { $0 == k }) == 9, "the other key is released")
        #expect(book.isHeld(k, rowId: 6))
        #expect(book.nextDue == 2.5, "looked at again after the recheck interval, not in a busy loop")
        // Row 6 fails too: the hold now starts at the lower of the two, and both are re-read.
        book.hold(k, rowId: 6, until: 2.2)
        #expect(book.releaseDue(now: 3, busy: { _ in false }) == 5)
    }
}
