/*
 * rtpgen: offers RTP-sized UDP packets on many flows at a set rate, faster than any relay here.
 *
 * Built by bench/line_rate.py at bench time (gcc -O2). One raw socket (IP_HDRINCL) sends
 * prebuilt IPv4/UDP packets in batches with sendmmsg, round-robin over the flows, so each flow
 * keeps its own source address and port as a real endpoint would and the sender spends one
 * system call per batch. Nothing here receives: delivery is counted by nftables in the
 * generator's namespace, where what comes back is counted and dropped before any socket.
 *
 *   rtpgen FLOWS_FILE PACKETS_PER_SECOND SECONDS PAYLOAD_BYTES
 *
 * FLOWS_FILE has one "src_ip src_port dst_ip dst_port" line per flow. A rate of 0 sends as fast
 * as it can. Prints "sent N packets in S seconds" and exits 0, or a reason and exits 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_FLOWS 200000
#define MAX_PAYLOAD 1400

struct flow {
    struct sockaddr_in destination;
    unsigned char *packet;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int read_flows(const char *path, struct flow **flows, size_t payload)
{
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fprintf(stderr, "rtpgen: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    *flows = calloc(MAX_FLOWS, sizeof(struct flow));
    char source[64], destination[64];
    unsigned source_port, destination_port;
    int count = 0;
    size_t length = sizeof(struct iphdr) + sizeof(struct udphdr) + payload;
    while (count < MAX_FLOWS && fscanf(file, "%63s %u %63s %u", source, &source_port, destination, &destination_port) == 4) {
        struct flow *flow = &(*flows)[count];
        unsigned char *packet = calloc(1, length);
        struct iphdr *ip = (struct iphdr *)packet;
        struct udphdr *udp = (struct udphdr *)(packet + sizeof(struct iphdr));
        unsigned char *rtp = packet + sizeof(struct iphdr) + sizeof(struct udphdr);
        ip->version = 4;
        ip->ihl = 5;
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        ip->tot_len = htons(length); /* the kernel fills in the checksum (and an id, when 0) */
        if (inet_pton(AF_INET, source, &ip->saddr) != 1 || inet_pton(AF_INET, destination, &ip->daddr) != 1 ||
            source_port > 65535 || destination_port > 65535) {
            fprintf(stderr, "rtpgen: flow %d is not 'src_ip src_port dst_ip dst_port'\n", count + 1);
            fclose(file);
            return -1;
        }
        udp->source = htons(source_port);
        udp->dest = htons(destination_port);
        udp->len = htons(sizeof(struct udphdr) + payload);
        udp->check = 0; /* optional over IPv4 */
        rtp[0] = 0x80;  /* RTP version 2, payload type 0 (PCMU) */
        rtp[1] = 0x00;
        flow->packet = packet;
        flow->destination.sin_family = AF_INET;
        flow->destination.sin_addr.s_addr = ip->daddr;
        count++;
    }
    fclose(file);
    if (count == 0) {
        fprintf(stderr, "rtpgen: no flows in %s\n", path);
        return -1;
    }
    return count;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: rtpgen FLOWS_FILE PACKETS_PER_SECOND SECONDS PAYLOAD_BYTES\n");
        return 1;
    }
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    long payload = atol(argv[4]);
    if (rate < 0 || seconds <= 0 || payload < 12 || payload > MAX_PAYLOAD) {
        fprintf(stderr, "rtpgen: a rate >= 0, seconds > 0 and a payload of 12-%d bytes\n", MAX_PAYLOAD);
        return 1;
    }
    struct flow *flows;
    int count = read_flows(argv[1], &flows, (size_t)payload);
    if (count < 0)
        return 1;
    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (raw < 0) {
        fprintf(stderr, "rtpgen: raw socket: %s (needs root)\n", strerror(errno));
        return 1;
    }
    int buffer = 4 << 20;
    setsockopt(raw, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    size_t length = sizeof(struct iphdr) + sizeof(struct udphdr) + (size_t)payload;
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    memset(messages, 0, sizeof messages);
    long long sent = 0, failed = 0;
    int next = 0;
    uint16_t sequence = 0;
    double started = now(), end = started + seconds;
    for (;;) {
        double at = now();
        if (at >= end)
            break;
        long long due = rate > 0 ? (long long)((at - started) * rate) - sent : BATCH;
        if (due <= 0) {
            struct timespec pause = {0, 20000};
            nanosleep(&pause, NULL);
            continue;
        }
        int batch = due < BATCH ? (int)due : BATCH;
        sequence++;
        for (int i = 0; i < batch; i++) {
            struct flow *flow = &flows[next];
            next = next + 1 == count ? 0 : next + 1;
            /* the RTP sequence number moves, as a real stream's does */
            unsigned char *rtp = flow->packet + sizeof(struct iphdr) + sizeof(struct udphdr);
            rtp[2] = sequence >> 8;
            rtp[3] = sequence & 0xff;
            vectors[i].iov_base = flow->packet;
            vectors[i].iov_len = length;
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = &flow->destination;
            messages[i].msg_hdr.msg_namelen = sizeof flow->destination;
        }
        int done = sendmmsg(raw, messages, batch, 0);
        if (done < 0) {
            if (errno == ENOBUFS || errno == EAGAIN) {
                /* the device queue is full: nothing was offered; wait for it (the rate reported is what went out) */
                failed++;
                struct timespec pause = {0, 50000};
                nanosleep(&pause, NULL);
                continue;
            }
            fprintf(stderr, "rtpgen: sendmmsg: %s\n", strerror(errno));
            return 1;
        }
        sent += done;
    }
    double elapsed = now() - started;
    printf("sent %lld packets in %.3f seconds (the device was full %lld times)\n", sent, elapsed, failed);
    return 0;
}
