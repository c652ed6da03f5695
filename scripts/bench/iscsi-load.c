/*
 * iscsi-load: a small libiscsi load generator for `npm run bench` (fio here has no libiscsi engine).
 *
 *   iscsi-load URL MODE BLOCK_BYTES QUEUE_DEPTH SECONDS [SPAN_BYTES]
 *
 * MODE is read | write (sequential, wrapping at SPAN) or randread | randwrite (aligned random
 * offsets within SPAN). Keeps QUEUE_DEPTH READ16/WRITE16 commands in flight on one session for
 * SECONDS and prints one JSON line: {"ops":N,"bytes":N,"seconds":S,"iops":N,"mibps":N}.
 * Any failed command ends the run with exit status 1 and the sense on stderr.
 *
 * Built by scripts/bench/run.ts with: cc -O2 -o iscsi-load iscsi-load.c -liscsi (libiscsi-dev).
 */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

struct load {
	struct iscsi_context *iscsi;
	int lun, write, random;
	uint32_t block_bytes;
	uint64_t span_blocks, next_lba;
	unsigned char *payload;
	double deadline;
	uint64_t ops, inflight;
	int failed;
	uint64_t rng;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t next_random(struct load *l)
{
	/* xorshift64*: deterministic, so both servers see the same offsets */
	l->rng ^= l->rng >> 12;
	l->rng ^= l->rng << 25;
	l->rng ^= l->rng >> 27;
	return l->rng * 2685821657736338717ULL;
}

static void issue(struct load *l);

static void done(struct iscsi_context *iscsi, int status, void *command_data, void *private_data)
{
	struct load *l = private_data;
	struct scsi_task *task = command_data;
	(void)iscsi;
	l->inflight--;
	if (status != SCSI_STATUS_GOOD) {
		fprintf(stderr, "iscsi-load: command failed: status %d %s\n", status, iscsi_get_error(l->iscsi));
		l->failed = 1;
	} else {
		l->ops++;
	}
	scsi_free_scsi_task(task);
	if (!l->failed && now() < l->deadline)
		issue(l);
}

static void issue(struct load *l)
{
	uint32_t blocks = l->block_bytes / 512;
	uint64_t lba;
	struct scsi_task *task;
	if (l->random) {
		lba = (next_random(l) % (l->span_blocks / blocks)) * blocks;
	} else {
		if (l->next_lba + blocks > l->span_blocks)
			l->next_lba = 0;
		lba = l->next_lba;
		l->next_lba += blocks;
	}
	if (l->write)
		task = iscsi_write16_task(l->iscsi, l->lun, lba, l->payload, l->block_bytes, 512, 0, 0, 0, 0, 0, done, l);
	else
		task = iscsi_read16_task(l->iscsi, l->lun, lba, l->block_bytes, 512, 0, 0, 0, 0, 0, done, l);
	if (task == NULL) {
		fprintf(stderr, "iscsi-load: could not queue a command: %s\n", iscsi_get_error(l->iscsi));
		l->failed = 1;
		return;
	}
	l->inflight++;
}

int main(int argc, char **argv)
{
	struct load l;
	struct iscsi_url *url;
	struct scsi_task *cap;
	struct scsi_readcapacity16 *rc16;
	uint64_t qd, i, size;
	double seconds, t0, elapsed;

	if (argc < 6) {
		fprintf(stderr, "usage: iscsi-load URL read|write|randread|randwrite BLOCK_BYTES QUEUE_DEPTH SECONDS [SPAN_BYTES]\n");
		return 2;
	}
	memset(&l, 0, sizeof(l));
	l.write = strstr(argv[2], "write") != NULL;
	l.random = strncmp(argv[2], "rand", 4) == 0;
	l.block_bytes = (uint32_t)strtoul(argv[3], NULL, 0);
	qd = strtoull(argv[4], NULL, 0);
	seconds = atof(argv[5]);
	l.rng = 0x9e3779b97f4a7c15ULL;
	if (l.block_bytes == 0 || l.block_bytes % 512 || qd == 0 || seconds <= 0) {
		fprintf(stderr, "iscsi-load: bad arguments\n");
		return 2;
	}

	l.iscsi = iscsi_create_context("iqn.2026-11.local.tandem:bench-load");
	url = iscsi_parse_full_url(l.iscsi, argv[1]);
	if (url == NULL) {
		fprintf(stderr, "iscsi-load: bad URL: %s\n", iscsi_get_error(l.iscsi));
		return 2;
	}
	iscsi_set_targetname(l.iscsi, url->target);
	iscsi_set_session_type(l.iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(l.iscsi, ISCSI_HEADER_DIGEST_NONE);
	if (iscsi_full_connect_sync(l.iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-load: login failed: %s\n", iscsi_get_error(l.iscsi));
		return 1;
	}
	l.lun = url->lun;
	cap = iscsi_readcapacity16_sync(l.iscsi, l.lun);
	if (cap == NULL || cap->status != SCSI_STATUS_GOOD || (rc16 = scsi_datain_unmarshall(cap)) == NULL) {
		fprintf(stderr, "iscsi-load: READ CAPACITY(16) failed: %s\n", iscsi_get_error(l.iscsi));
		return 1;
	}
	size = (rc16->returned_lba + 1) * rc16->block_length;
	scsi_free_scsi_task(cap);
	l.span_blocks = (argc > 6 ? strtoull(argv[6], NULL, 0) : size) / 512;
	if (l.span_blocks * 512 > size)
		l.span_blocks = size / 512;
	l.payload = malloc(l.block_bytes);
	for (i = 0; i < l.block_bytes; i++)
		l.payload[i] = (unsigned char)(i * 7 + 1);

	t0 = now();
	l.deadline = t0 + seconds;
	for (i = 0; i < qd; i++)
		issue(&l);
	while (l.inflight > 0) {
		struct pollfd pfd;
		pfd.fd = iscsi_get_fd(l.iscsi);
		pfd.events = iscsi_which_events(l.iscsi);
		if (poll(&pfd, 1, 5000) < 0) {
			perror("poll");
			return 1;
		}
		if (iscsi_service(l.iscsi, pfd.revents) < 0) {
			fprintf(stderr, "iscsi-load: %s\n", iscsi_get_error(l.iscsi));
			return 1;
		}
	}
	elapsed = now() - t0;
	iscsi_logout_sync(l.iscsi);
	iscsi_destroy_context(l.iscsi);
	if (l.failed)
		return 1;
	printf("{\"ops\":%llu,\"bytes\":%llu,\"seconds\":%.4f,\"iops\":%.0f,\"mibps\":%.1f}\n",
	       (unsigned long long)l.ops, (unsigned long long)l.ops * l.block_bytes, elapsed,
	       l.ops / elapsed, l.ops * (double)l.block_bytes / elapsed / 1048576.0);
	return 0;
}
