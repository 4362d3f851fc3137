#ifndef OUTBOX_CKAFKA_SHIM_H
#define OUTBOX_CKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* Some rdkafka.h constants are macros Swift cannot import (casts, expressions). */
static const int32_t outbox_rd_kafka_partition_ua = RD_KAFKA_PARTITION_UA;
static const int outbox_rd_kafka_msg_f_copy = RD_KAFKA_MSG_F_COPY;

#endif
