#ifndef OUTBOX_CKAFKA_SHIM_H
#define OUTBOX_CKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <errno.h>
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

#endif
