/*
 * A load generator in C: GETs http://HOST:PORT/PATH at a steady rate for a
 * while, and sends one statsd datagram per second (UDP) to
 * $STATSD_HOST:$STATSD_PORT with a counter and each request's latency.
 * Usage: gen HOST PORT PATH [REQUESTS_PER_SECOND] [SECONDS]
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static struct addrinfo *resolve(const char *host, const char *port, int socktype) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = socktype;
    if (getaddrinfo(host, port, &hints, &res) != 0) return NULL;
    return res;
}

/* One GET; returns 0 when the answer is HTTP 200. */
static int get(struct addrinfo *target, const char *host, const char *path) {
    int fd = socket(target->ai_family, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, target->ai_addr, target->ai_addrlen) != 0) { close(fd); return -1; }
    char request[512];
    int n = snprintf(request, sizeof request, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (write(fd, request, n) != n) { close(fd); return -1; }
    char buf[4096];
    ssize_t got, total = 0;
    int ok = -1;
    while ((got = read(fd, buf, sizeof buf)) > 0) {
        if (total == 0 && got >= 12 && strncmp(buf + 9, "200", 3) == 0) ok = 0;
        total += got;
    }
    close(fd);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s HOST PORT PATH [REQUESTS_PER_SECOND] [SECONDS]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *port = argv[2], *path = argv[3];
    int rate = argc > 4 ? atoi(argv[4]) : 10;
    int seconds = argc > 5 ? atoi(argv[5]) : 30;
    const char *prefix = getenv("STATSD_PREFIX") ? getenv("STATSD_PREFIX") : "demo.c";
    const char *statsd_host = getenv("STATSD_HOST"), *statsd_port = getenv("STATSD_PORT");

    struct addrinfo *target = resolve(host, port, SOCK_STREAM);
    if (!target) { fprintf(stderr, "cannot resolve %s\n", host); return 1; }
    struct addrinfo *statsd = statsd_host && statsd_port ? resolve(statsd_host, statsd_port, SOCK_DGRAM) : NULL;
    int udp = statsd ? socket(statsd->ai_family, SOCK_DGRAM, 0) : -1;

    long sent = 0, failed = 0;
    double start = now_ms();
    for (int s = 0; s < seconds; s++) {
        char packet[8192];
        int len = 0;
        for (int i = 0; i < rate; i++) {
            double t0 = now_ms();
            int rc = get(target, host, path);
            double ms = now_ms() - t0;
            sent++;
            if (rc != 0) failed++;
            if (len < (int)sizeof packet - 128)
                len += snprintf(packet + len, sizeof packet - len, "%s.requests:1|c|#status:%s\n%s.latency:%.3f|ms\n",
                                prefix, rc == 0 ? "ok" : "error", prefix, ms);
        }
        if (udp >= 0 && len > 0) sendto(udp, packet, len, 0, statsd->ai_addr, statsd->ai_addrlen);
        double next = start + (s + 1) * 1000.0, wait = next - now_ms();
        if (wait > 0) usleep((useconds_t)(wait * 1000));
    }
    printf("requests=%ld failed=%ld\n", sent, failed);
    return failed == 0 ? 0 : 1;
}
