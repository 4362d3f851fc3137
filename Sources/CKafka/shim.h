#ifndef OUTBOX_CKAFKA_SHIM_H
#define OUTBOX_CKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Some rdkafka.h constants are macros Swift cannot import (casts, expressions). */
static const int32_t outbox_rd_kafka_partition_ua = RD_KAFKA_PARTITION_UA;
static const int outbox_rd_kafka_msg_f_copy = RD_KAFKA_MSG_F_COPY;

/*
 * The broker connections of one producer, opened and closed through librdkafka's socket
 * callbacks. Two things no librdkafka setting gives:
 *
 *  - Every socket is created with SO_LINGER {on, 0}: closing it resets the connection and
 *    discards whatever the kernel still holds unsent or unacknowledged. With the default, a
 *    connection librdkafka closes (after a request timed out, say during a network partition)
 *    lives on in the kernel as an orphan that keeps retransmitting its last ProduceRequests, and
 *    when the network heals they reach the broker seconds later, after the relay re-sent those
 *    rows and produced later rows of their keys: an old value lands last.
 *  - The relay can abort every connection still open (outbox_socket_ledger_abort) when it
 *    abandons a producer, at once, without waiting for rd_kafka_destroy.
 */
#define OUTBOX_LEDGER_MAX_FDS 256
typedef struct outbox_socket_ledger {
    pthread_mutex_t lock;
    int fds[OUTBOX_LEDGER_MAX_FDS];
    int tracked;      /* entries used in fds */
    int open;         /* sockets open now (tracked or not) */
} outbox_socket_ledger;

static inline outbox_socket_ledger *outbox_socket_ledger_new(void) {
    outbox_socket_ledger *l = (outbox_socket_ledger *)calloc(1, sizeof *l);
    if (l) pthread_mutex_init(&l->lock, NULL);
    return l;
}

static inline void outbox_socket_ledger_free(outbox_socket_ledger *l) {
    if (!l) return;
    pthread_mutex_destroy(&l->lock);
    free(l);
}

static inline int outbox_socket_cb(int domain, int type, int protocol, void *opaque) {
    int fd = socket(domain, type | SOCK_CLOEXEC, protocol);
    if (fd < 0) return -1;
    struct linger lg = { 1, 0 };
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    outbox_socket_ledger *l = (outbox_socket_ledger *)opaque;
    if (l) {
        pthread_mutex_lock(&l->lock);
        if (l->tracked < OUTBOX_LEDGER_MAX_FDS) l->fds[l->tracked++] = fd;
        l->open++;
        pthread_mutex_unlock(&l->lock);
    }
    return fd;
}

static inline int outbox_closesocket_cb(int fd, void *opaque) {
    outbox_socket_ledger *l = (outbox_socket_ledger *)opaque;
    if (!l) return close(fd) == 0 ? 0 : errno;
    pthread_mutex_lock(&l->lock);
    for (int i = 0; i < l->tracked; i++) {
        if (l->fds[i] == fd) { l->fds[i] = l->fds[--l->tracked]; break; }
    }
    l->open--;
    /* Closed under the lock: the number cannot be handed out again (and aborted by mistake)
       while it is still in the table. */
    int r = close(fd) == 0 ? 0 : errno;
    pthread_mutex_unlock(&l->lock);
    return r;
}

/* Installs the callbacks; the ledger must outlive the rd_kafka_t made from conf. */
static inline void outbox_conf_set_socket_ledger(rd_kafka_conf_t *conf, outbox_socket_ledger *l) {
    rd_kafka_conf_set_opaque(conf, l);
    rd_kafka_conf_set_socket_cb(conf, outbox_socket_cb);
    rd_kafka_conf_set_closesocket_cb(conf, outbox_closesocket_cb);
}

/* Resets every tracked connection now (connect(AF_UNSPEC) on a TCP socket is Linux's
   tcp_disconnect: RST, send queue discarded). librdkafka sees the connection fail and closes the
   socket itself. Returns how many were reset. */
static inline int outbox_socket_ledger_abort(outbox_socket_ledger *l) {
    if (!l) return 0;
    struct sockaddr sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_family = AF_UNSPEC;
    int n = 0;
    pthread_mutex_lock(&l->lock);
    for (int i = 0; i < l->tracked; i++) {
        if (connect(l->fds[i], &sa, sizeof sa) == 0) n++;
    }
    pthread_mutex_unlock(&l->lock);
    return n;
}

static inline int outbox_socket_ledger_open(outbox_socket_ledger *l) {
    if (!l) return 0;
    pthread_mutex_lock(&l->lock);
    int n = l->open;
    pthread_mutex_unlock(&l->lock);
    return n;
}

/*
 * How long the broker took to acknowledge each message: produce() call → the acknowledgement,
 * measured on librdkafka's broker thread as the acknowledgement is handled (an on_acknowledgement
 * interceptor calling rd_kafka_message_latency, which reads the clock when it is called). The
 * relay takes delivery reports later (at the end of its next wait, not when they come), so this
 * is the one place where the time of the acknowledgement itself is known. Only messages the
 * broker acknowledged count. Each bucket counts its own messages; the reader (AckLatency.snapshot)
 * makes them cumulative.
 */
#define OUTBOX_ACK_BUCKETS 24
static const int64_t outbox_ack_bucket_us[OUTBOX_ACK_BUCKETS] = {
    100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500,
    10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};
typedef struct outbox_ack_latency {
    uint64_t counts[OUTBOX_ACK_BUCKETS + 1];  /* per bucket; the last is above every bound */
    uint64_t sum_us;
    /* The longest latency since outbox_ack_latency_take_recent_max last took it (0: none). */
    uint64_t recent_max_us;
    /* The acknowledgement log (outbox_ack_latency_open_log): off when log_fd < 0. */
    int log_fd;
    pthread_mutex_t log_lock;
    char *log_buf;
    size_t log_used;
    /* Each acknowledged message's time by its opaque (outbox_ack_latency_keep_times): slot
       opaque & ack_mask holds (opaque, µs since the epoch), written by the interceptor; NULL:
       not kept. */
    uint64_t *ack_times;
    uint64_t ack_mask;
} outbox_ack_latency;

#define OUTBOX_ACK_LOG_BUF (256 * 1024)

static inline outbox_ack_latency *outbox_ack_latency_new(void) {
    outbox_ack_latency *h = (outbox_ack_latency *)calloc(1, sizeof(outbox_ack_latency));
    if (h) {
        h->log_fd = -1;
        pthread_mutex_init(&h->log_lock, NULL);
    }
    return h;
}

/* Writes what the log holds (the caller holds log_lock). */
static inline void outbox_ack_log_write_locked(outbox_ack_latency *h) {
    size_t off = 0;
    while (off < h->log_used) {
        ssize_t n = write(h->log_fd, h->log_buf + off, h->log_used - off);
        if (n <= 0) { if (n < 0 && errno == EINTR) continue; break; }
        off += (size_t)n;
    }
    h->log_used = 0;
}

static inline void outbox_ack_latency_flush_log(outbox_ack_latency *h) {
    if (!h || h->log_fd < 0) return;
    pthread_mutex_lock(&h->log_lock);
    outbox_ack_log_write_locked(h);
    pthread_mutex_unlock(&h->log_lock);
}

/* A measuring aid, off unless asked for: from now on every acknowledged message that carries an
   `outbox-id` header adds a line "<outbox id> <acknowledgement time, µs since the epoch>" to
   `path` (appended; written in 256 KiB pieces and by outbox_ack_latency_flush_log). Returns 0, or
   errno. */
static inline int outbox_ack_latency_open_log(outbox_ack_latency *h, const char *path) {
    char *buf = (char *)malloc(OUTBOX_ACK_LOG_BUF);
    if (!buf) return ENOMEM;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) { int e = errno; free(buf); return e; }
    pthread_mutex_lock(&h->log_lock);
    h->log_buf = buf;
    h->log_fd = fd;
    pthread_mutex_unlock(&h->log_lock);
    return 0;
}

/* From now on, keeps each acknowledged message's time by its opaque (non-zero), for at least
   `messages` messages in flight at once: a slot is reused `messages` (rounded up to a power of
   two, at least 1024) opaques later, and outbox_ack_latency_time_of then finds no time rather than
   a wrong one. Call before any producer uses `h`. Returns 0, or ENOMEM. */
static inline int outbox_ack_latency_keep_times(outbox_ack_latency *h, size_t messages) {
    uint64_t n = 1024;
    while (n < messages) n <<= 1;
    uint64_t *times = (uint64_t *)calloc(2 * n, sizeof(uint64_t));
    if (!times) return ENOMEM;
    free(h->ack_times);
    h->ack_times = times;
    h->ack_mask = n - 1;
    return 0;
}

/* When the broker acknowledged the message produced with `opaque` (µs since the epoch, this
   host's clock), or 0: not kept, not acknowledged yet, or its slot taken since by a later one.
   The interceptor clears a slot's opaque before it writes the time and sets it after, so a time
   read between two matching opaques is that message's. */
static inline uint64_t outbox_ack_latency_time_of(const outbox_ack_latency *h, uint64_t opaque) {
    if (!h->ack_times || opaque == 0) return 0;
    const uint64_t *slot = h->ack_times + 2 * (opaque & h->ack_mask);
    if (__atomic_load_n(&slot[0], __ATOMIC_SEQ_CST) != opaque) return 0;
    uint64_t us = __atomic_load_n(&slot[1], __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&slot[0], __ATOMIC_SEQ_CST) != opaque) return 0;
    return us;
}

static inline void outbox_ack_latency_free(outbox_ack_latency *h) {
    if (!h) return;
    if (h->log_fd >= 0) {
        outbox_ack_latency_flush_log(h);
        close(h->log_fd);
    }
    free(h->ack_times);
    free(h->log_buf);
    pthread_mutex_destroy(&h->log_lock);
    free(h);
}

/* Decimal digits of `v` at `out` (at most 20); returns how many. (It replaces an snprintf that
   ran per row on the broker thread, whose CPU the bench charges to the relay it measures.) */
static inline size_t outbox_ack_log_digits(char *out, unsigned long long v) {
    char tmp[20];
    size_t n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

static inline void outbox_ack_log_record(outbox_ack_latency *h, rd_kafka_message_t *m, unsigned long long us) {
    rd_kafka_headers_t *hdrs = NULL;
    const void *id = NULL;
    size_t id_len = 0;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, "outbox-id", &id, &id_len) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        !id || id_len == 0 || id_len > 20)
        return;
    pthread_mutex_lock(&h->log_lock);
    if (h->log_fd >= 0) {
        if (h->log_used + 48 > OUTBOX_ACK_LOG_BUF) outbox_ack_log_write_locked(h);
        memcpy(h->log_buf + h->log_used, id, id_len);
        h->log_used += id_len;
        h->log_buf[h->log_used++] = ' ';
        h->log_used += outbox_ack_log_digits(h->log_buf + h->log_used, us);
        h->log_buf[h->log_used++] = '\n';
    }
    pthread_mutex_unlock(&h->log_lock);
}

static inline int outbox_ack_latency_bucket_count(void) { return OUTBOX_ACK_BUCKETS; }
static inline int64_t outbox_ack_latency_bound_us(int i) { return outbox_ack_bucket_us[i]; }

/* Bucket i's count (i == OUTBOX_ACK_BUCKETS: above every bound), and the sum, read atomically
   one by one (a reader may see a message in one and not yet the other: a scrape's skew). */
static inline uint64_t outbox_ack_latency_count(const outbox_ack_latency *h, int i) {
    return __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
}
static inline uint64_t outbox_ack_latency_sum_us(const outbox_ack_latency *h) {
    return __atomic_load_n(&h->sum_us, __ATOMIC_RELAXED);
}

static inline void outbox_ack_latency_record(outbox_ack_latency *h, int64_t us) {
    if (us < 0) return;
    int i = 0;
    while (i < OUTBOX_ACK_BUCKETS && us > outbox_ack_bucket_us[i]) i++;
    __atomic_fetch_add(&h->counts[i], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->sum_us, (uint64_t)us, __ATOMIC_RELAXED);
    uint64_t seen = __atomic_load_n(&h->recent_max_us, __ATOMIC_RELAXED);
    while ((uint64_t)us > seen &&
           !__atomic_compare_exchange_n(&h->recent_max_us, &seen, (uint64_t)us, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* The longest latency recorded since the last call (0: none), starting afresh. */
static inline uint64_t outbox_ack_latency_take_recent_max(outbox_ack_latency *h) {
    return __atomic_exchange_n(&h->recent_max_us, 0, __ATOMIC_RELAXED);
}

static inline rd_kafka_resp_err_t outbox_on_acknowledgement(rd_kafka_t *rk, rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    outbox_ack_latency *h = (outbox_ack_latency *)opaque;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR || !h) return RD_KAFKA_RESP_ERR_NO_ERROR;
    outbox_ack_latency_record(h, rd_kafka_message_latency(m));
    int logging = __atomic_load_n(&h->log_fd, __ATOMIC_RELAXED) >= 0;
    if (!h->ack_times && !logging) return RD_KAFKA_RESP_ERR_NO_ERROR;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long us = (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000;
    uint64_t msg_opaque = (uint64_t)(uintptr_t)m->_private;
    if (h->ack_times && msg_opaque != 0) {
        uint64_t *slot = h->ack_times + 2 * (msg_opaque & h->ack_mask);
        __atomic_store_n(&slot[0], 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&slot[1], (uint64_t)us, __ATOMIC_SEQ_CST);
        __atomic_store_n(&slot[0], msg_opaque, __ATOMIC_SEQ_CST);
    }
    if (logging) outbox_ack_log_record(h, m, us);
    return RD_KAFKA_RESP_ERR_NO_ERROR;
}

static inline rd_kafka_resp_err_t outbox_ack_latency_on_new(rd_kafka_t *rk, const rd_kafka_conf_t *conf, void *opaque,
                                                            char *errstr, size_t errstr_size) {
    (void)conf; (void)errstr; (void)errstr_size;
    return rd_kafka_interceptor_add_on_acknowledgement(rk, "outbox-ack-latency", outbox_on_acknowledgement, opaque);
}

/* Records every acknowledgement of the client made from `conf` into `h`, which must outlive it. */
static inline rd_kafka_resp_err_t outbox_conf_set_ack_latency(rd_kafka_conf_t *conf, outbox_ack_latency *h) {
    return rd_kafka_conf_interceptor_add_on_new(conf, "outbox-ack-latency", outbox_ack_latency_on_new, h);
}

#endif
