/*
 * Open-loop, constant-rate HTTP/1.1 load generator for bench/ (the part of wrk2 we need).
 *
 * Why: wrk paced with a Lua delay() sends in 1 ms bursts, so the p99 it measures at "half
 * load" is mostly its own burstiness. Here slot i is due at t0 + i/R (CLOCK_MONOTONIC, ns);
 * one thread waits on epoll until the next slot (epoll_pwait2's ns timeout, or a timerfd
 * armed at the slot on kernels before 5.11; never a busy spin), and at each wake-up sends
 * every due slot on an idle keep-alive connection. A slot finding no idle connection waits
 * in a FIFO and its latency keeps counting from its slot time (coordinated omission
 * corrected, like wrk2); the latency from the actual send is reported too (sent_*).
 *
 *   _paced_load --addr 127.0.0.1 --port 8080 --host-header bench.local --path / \
 *               --rate 1000 --connections 50 --duration 10 [--timeout-ms 2000] [--warmup 1]
 *
 * Prints one line: PACEDJSON {...}. Exit 2 (message on stderr) on bad arguments or when a
 * connection cannot be made at start.
 *
 * Measured window: slots due in [t0 + warmup, t0 + warmup + duration); `requests` counts
 * their responses, `duration_us` is the window. After the window no new slot is released;
 * the queued ones are still sent and the requests in flight answered, for up to --timeout-ms
 * (so a stall near the end is measured, not dropped); window slots still unsent or unanswered
 * then (but not timed out) are reported as `dropped`.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef int64_t i64;

#define MS 1000000LL
#define SEC 1000000000LL
#define HOUSEKEEP_NS (10 * MS) /* timeouts and reconnect retries are checked this often */
#define LATE_NS MS
#define BUF_SIZE 16384 /* status line + headers must fit; bodies are skipped, not stored */
#define MAX_CONNS 20000
#define TIMER_TAG UINT64_MAX

static i64 now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (i64)ts.tv_sec * SEC + ts.tv_nsec;
}

static _Noreturn void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "paced_load: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

/* -- latency histogram: log-linear (HdrHistogram-like), ns, 128 sub-buckets per power of two
 * (< 0.8 % error), exact below 256 ns, up to ~78 hours. ------------------------------- */

#define SUB 128
#define SUB_BITS 7
#define NBUCKETS (2 * SUB + 40 * SUB)

typedef struct {
    uint64_t counts[NBUCKETS];
    uint64_t n, sum;
    i64 max;
} hist_t;

static int h_index(i64 v)
{
    if (v < 0)
        v = 0;
    if (v < 2 * SUB)
        return (int)v;
    int shift = 63 - __builtin_clzll((uint64_t)v) - SUB_BITS;
    int idx = 2 * SUB + (shift - 1) * SUB + (int)((v >> shift) - SUB);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static i64 h_highest(int idx) /* the largest value that lands in bucket idx */
{
    if (idx < 2 * SUB)
        return idx;
    int shift = (idx - 2 * SUB) / SUB + 1;
    i64 sub = (idx - 2 * SUB) % SUB + SUB;
    return ((sub + 1) << shift) - 1;
}

static void h_record(hist_t *h, i64 v)
{
    if (v < 0)
        v = 0;
    h->counts[h_index(v)]++;
    h->n++;
    h->sum += (uint64_t)v;
    if (v > h->max)
        h->max = v;
}

static i64 h_percentile(const hist_t *h, double p)
{
    if (h->n == 0)
        return 0;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->n);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            i64 v = h_highest(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* -- configuration and state ------------------------------------------------------------- */

static struct {
    const char *host, *addr, *path;
    int port, conns;
    double rate, duration, warmup;
    i64 timeout;
    struct sockaddr_storage sa;
    socklen_t salen;
    char req[4096];
    size_t reqlen;
} cfg = {.path = "/", .conns = 10, .timeout = 2000 * MS};

enum { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };
enum { P_HEAD, P_BODY_CL, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_CRLF, P_TRAILER, P_BODY_EOF };

typedef struct {
    int fd, state, in_ring, want_out;
    uint32_t gen; /* bumped on every new socket: stale epoll events are ignored */
    i64 slot_t, sent_t, conn_start, retry_at;
    size_t wpos;
    /* response parser */
    int pst, status, close_after;
    i64 remaining;
    char *buf;
    size_t len, pos, scan;
} conn_t;

static conn_t *conns;
static int *ring, ring_head, ring_count; /* FIFO of idle connections */
static int ep, tfd;
static i64 t0, tw, te;
static double period_ns;
static int64_t i_w;      /* first slot of the measured window */
static int64_t released; /* slots whose time has come (< te) */
static int64_t next_send; /* FIFO of due slots: [next_send, released) */
static int inflight, draining;
static hist_t corrected, sent;
static struct {
    uint64_t requests, sent, non2xx, status, connect, read, write, timeout, late;
} st;

static i64 slot_time(int64_t i) { return t0 + (i64)llround((double)i * period_ns); }
static int measuring(i64 now) { return now >= tw; }

/* -- connections ---------------------------------------------------------------------------- */

static void ep_set(conn_t *c, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events};
    ev.data.u64 = ((uint64_t)c->gen << 32) | (uint32_t)(c - conns);
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) {
        perror("paced_load: epoll_ctl");
        exit(1);
    }
}

static void push_idle(conn_t *c)
{
    c->state = C_IDLE;
    if (!c->in_ring) {
        c->in_ring = 1;
        ring[(ring_head + ring_count++) % cfg.conns] = (int)(c - conns);
    }
}

static conn_t *pop_idle(void)
{
    while (ring_count > 0) {
        conn_t *c = &conns[ring[ring_head]];
        ring_head = (ring_head + 1) % cfg.conns;
        ring_count--;
        c->in_ring = 0;
        if (c->state == C_IDLE)
            return c;
    }
    return NULL;
}

static void reset_parser(conn_t *c)
{
    c->pst = P_HEAD;
    c->len = c->pos = c->scan = 0;
    c->status = c->close_after = 0;
    c->remaining = 0;
}

static void close_conn(conn_t *c)
{
    if (c->state == C_BUSY)
        inflight--;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = C_DOWN;
    c->want_out = 0;
    reset_parser(c);
}

static void connect_failed(conn_t *c, i64 now)
{
    if (measuring(now))
        st.connect++;
    close_conn(c);
    c->retry_at = now + HOUSEKEEP_NS;
}

static void start_connect(conn_t *c, i64 now)
{
    reset_parser(c);
    c->gen++;
    c->fd = socket(cfg.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        connect_failed(c, now);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->conn_start = now;
    if (connect(c->fd, (struct sockaddr *)&cfg.sa, cfg.salen) == 0) {
        ep_set(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_ADD);
        push_idle(c);
    } else if (errno == EINPROGRESS) {
        c->state = C_CONNECTING;
        ep_set(c, EPOLLOUT, EPOLL_CTL_ADD);
    } else {
        connect_failed(c, now);
    }
}

static void reconnect(conn_t *c, i64 now)
{
    close_conn(c);
    start_connect(c, now);
}

/* A broken connection: the request on it (if any) is lost and counted, like wrk does (when
 * its slot is in the measured window). */
static void conn_error(conn_t *c, i64 now, uint64_t *counter)
{
    if (c->state == C_BUSY && c->slot_t >= tw)
        (*counter)++;
    reconnect(c, now);
}

static void write_more(conn_t *c, i64 now)
{
    while (c->wpos < cfg.reqlen) {
        ssize_t n = send(c->fd, cfg.req + c->wpos, cfg.reqlen - c->wpos, MSG_NOSIGNAL);
        if (n > 0) {
            c->wpos += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) {
                c->want_out = 1;
                ep_set(c, EPOLLIN | EPOLLRDHUP | EPOLLOUT, EPOLL_CTL_MOD);
            }
            return;
        } else {
            conn_error(c, now, &st.write);
            return;
        }
    }
    if (c->want_out) {
        c->want_out = 0;
        ep_set(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
    }
}

static void send_slot(conn_t *c, int64_t i)
{
    c->slot_t = slot_time(i);
    c->sent_t = now_ns();
    c->state = C_BUSY;
    c->wpos = 0;
    inflight++;
    if (c->slot_t >= tw) {
        st.sent++;
        if (c->sent_t - c->slot_t > LATE_NS)
            st.late++;
    }
    write_more(c, c->sent_t);
}

/* -- responses ------------------------------------------------------------------------------- */

static int has_token(const char *v, size_t n, const char *tok)
{
    size_t k = strlen(tok);
    for (size_t i = 0; i + k <= n; i++)
        if (strncasecmp(v + i, tok, k) == 0)
            return 1;
    return 0;
}

static int header_is(const char *name, size_t n, const char *want)
{
    return n == strlen(want) && strncasecmp(name, want, n) == 0;
}

/* Status line and headers in buf[from, end): -1 when malformed, else 0 with the body mode set. */
static int parse_head(conn_t *c, const char *p, const char *end)
{
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (eol == NULL)
        eol = end;
    if (eol - p < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return -1;
    int status = 0;
    for (int k = 9; k < 12; k++) {
        if (p[k] < '0' || p[k] > '9')
            return -1;
        status = status * 10 + (p[k] - '0');
    }
    int http10 = p[7] == '0', chunked = 0, keep_alive = 0, close = 0;
    i64 length = -1;
    for (p = eol + 2; p < end; p = eol + 2) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (eol == NULL)
            eol = end;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon == NULL)
            return -1;
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        size_t name_len = (size_t)(colon - p), vlen = (size_t)(eol - v);
        if (header_is(p, name_len, "content-length")) {
            i64 x = 0;
            const char *q = v;
            for (; q < eol && *q >= '0' && *q <= '9'; q++)
                x = x * 10 + (*q - '0');
            while (q < eol && (*q == ' ' || *q == '\t'))
                q++;
            if (q == v || q != eol || (length >= 0 && length != x))
                return -1;
            length = x;
        } else if (header_is(p, name_len, "transfer-encoding")) {
            chunked = has_token(v, vlen, "chunked");
        } else if (header_is(p, name_len, "connection")) {
            close |= has_token(v, vlen, "close");
            keep_alive |= has_token(v, vlen, "keep-alive");
        }
    }
    c->status = status;
    c->close_after = close || (http10 && !keep_alive);
    if ((status >= 100 && status < 200) || status == 204 || status == 304) {
        c->remaining = 0;
        c->pst = P_BODY_CL;
    } else if (chunked) {
        c->pst = P_CHUNK_SIZE;
    } else if (length >= 0) {
        c->remaining = length;
        c->pst = P_BODY_CL;
    } else {
        c->pst = P_BODY_EOF; /* no length: the body ends when the server closes */
        c->close_after = 1;
    }
    return 0;
}

/* One whole response received at `now`: record it, then the connection is idle again. */
static void on_response(conn_t *c, i64 now)
{
    if (c->slot_t >= tw) {
        st.requests++;
        h_record(&corrected, now - c->slot_t);
        h_record(&sent, now - c->sent_t);
        if (c->status < 200 || c->status > 299)
            st.non2xx++;
        if (c->status >= 400)
            st.status++;
    }
    c->state = C_IDLE;
    inflight--;
    c->pst = P_HEAD;
    if (c->close_after)
        reconnect(c, now);
    else
        push_idle(c);
}

/* Parse what is buffered; 1 while the connection is still open, 0 if it was closed. */
static int process(conn_t *c, i64 now)
{
    for (;;) {
        size_t avail = c->len - c->pos;
        char *p = c->buf + c->pos;
        if (avail == 0 && !(c->pst == P_BODY_CL && c->remaining == 0))
            return 1; /* (an empty body completes without more bytes) */
        if (c->state != C_BUSY) { /* bytes nobody asked for */
            if (measuring(now))
                st.read++;
            reconnect(c, now);
            return 0;
        }
        switch (c->pst) {
        case P_HEAD: {
            size_t from = c->scan > c->pos ? c->scan - c->pos : 0;
            char *end = memmem(p + from, avail - from, "\r\n\r\n", 4);
            if (end == NULL) {
                c->scan = c->len > 3 ? c->len - 3 : 0;
                return 1;
            }
            size_t head = (size_t)(end - p) + 4;
            if (parse_head(c, p, end + 2) < 0) {
                conn_error(c, now, &st.read);
                return 0;
            }
            int interim = c->status >= 100 && c->status < 200 && c->status != 101;
            c->pos += head;
            c->scan = c->pos;
            if (interim) /* 100 Continue and friends: the real response follows */
                c->pst = P_HEAD;
            break;
        }
        case P_BODY_CL: {
            size_t take = (i64)avail < c->remaining ? avail : (size_t)c->remaining;
            c->pos += take;
            c->remaining -= (i64)take;
            if (c->remaining > 0)
                return 1;
            c->scan = c->pos;
            on_response(c, now);
            if (c->state != C_IDLE)
                return 0;
            break;
        }
        case P_CHUNK_SIZE: {
            char *eol = memmem(p, avail, "\r\n", 2);
            if (eol == NULL) {
                if (avail > 1024) {
                    conn_error(c, now, &st.read);
                    return 0;
                }
                return 1;
            }
            i64 size = 0;
            char *q = p;
            for (; q < eol && size < (1LL << 56); q++) {
                int d = (*q >= '0' && *q <= '9') ? *q - '0'
                        : (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10
                        : (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10 : -1;
                if (d < 0)
                    break;
                size = size * 16 + d;
            }
            if (q == p || (q < eol && *q != ';' && *q != ' ' && *q != '\t')) {
                conn_error(c, now, &st.read);
                return 0;
            }
            c->pos += (size_t)(eol - p) + 2;
            c->remaining = size;
            c->pst = size ? P_CHUNK_DATA : P_TRAILER;
            break;
        }
        case P_CHUNK_DATA: {
            size_t take = (i64)avail < c->remaining ? avail : (size_t)c->remaining;
            c->pos += take;
            c->remaining -= (i64)take;
            if (c->remaining > 0)
                return 1;
            c->pst = P_CHUNK_CRLF;
            break;
        }
        case P_CHUNK_CRLF:
            if (avail < 2)
                return 1;
            if (p[0] != '\r' || p[1] != '\n') {
                conn_error(c, now, &st.read);
                return 0;
            }
            c->pos += 2;
            c->pst = P_CHUNK_SIZE;
            break;
        case P_TRAILER: {
            char *eol = memmem(p, avail, "\r\n", 2);
            if (eol == NULL)
                return 1;
            c->pos += (size_t)(eol - p) + 2;
            if (eol == p) {
                c->scan = c->pos;
                on_response(c, now);
                if (c->state != C_IDLE)
                    return 0;
            }
            break;
        }
        case P_BODY_EOF:
            c->pos = c->len;
            return 1;
        }
    }
}

static void on_readable(conn_t *c, i64 now)
{
    if (c->pos > 0) { /* keep the unparsed tail at the front */
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->scan = c->scan > c->pos ? c->scan - c->pos : 0;
        c->pos = 0;
    }
    if (c->len == BUF_SIZE) { /* a status line + headers larger than the buffer */
        conn_error(c, now, &st.read);
        return;
    }
    ssize_t n = read(c->fd, c->buf + c->len, BUF_SIZE - c->len);
    if (n > 0) {
        c->len += (size_t)n;
        process(c, now);
    } else if (n == 0) {
        if (c->state == C_BUSY && c->pst == P_BODY_EOF)
            on_response(c, now); /* close_after is set: reconnects */
        else if (c->state == C_BUSY)
            conn_error(c, now, &st.read);
        else
            reconnect(c, now); /* the server closed an idle connection: not an error */
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        conn_error(c, now, &st.read);
    }
}

static void on_event(struct epoll_event *ev, i64 now)
{
    conn_t *c = &conns[(uint32_t)ev->data.u64];
    if ((uint32_t)(ev->data.u64 >> 32) != c->gen || c->fd < 0)
        return; /* an event of a socket closed earlier in this batch */
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            connect_failed(c, now);
            return;
        }
        ep_set(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
        push_idle(c);
        return;
    }
    if ((ev->events & EPOLLOUT) && c->want_out) {
        write_more(c, now);
        if (c->fd < 0 || (uint32_t)(ev->data.u64 >> 32) != c->gen)
            return;
    }
    if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        on_readable(c, now);
}

/* Every HOUSEKEEP_NS: requests past the timeout, connects past it, reconnect retries. */
static void housekeep(i64 now)
{
    for (int k = 0; k < cfg.conns; k++) {
        conn_t *c = &conns[k];
        if (c->state == C_BUSY && now - c->sent_t > cfg.timeout)
            conn_error(c, now, &st.timeout);
        else if (c->state == C_CONNECTING && now - c->conn_start > cfg.timeout)
            connect_failed(c, now);
        else if (c->state == C_DOWN && now >= c->retry_at)
            start_connect(c, now);
    }
}

/* Release the slots whose time has come and send as many as there are idle connections. */
static void dispatch(i64 now)
{
    if (!draining)
        while (slot_time(released) <= now && slot_time(released) < te)
            released++;
    while (next_send < released) {
        conn_t *c = pop_idle();
        if (c == NULL)
            return;
        send_slot(c, next_send++);
    }
}

/* -- start-up ------------------------------------------------------------------------------------ */

static double num_arg(const char *name, const char *text, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "paced_load: --%s %s: expected a number in [%g, %g]\n", name, text, lo, hi);
        exit(2);
    }
    return v;
}

static _Noreturn void usage(FILE *to, const char *why)
{
    fprintf(to,
            "paced_load: %s\nusage: paced_load --addr IP --port P --rate R --duration S "
            "[--host-header H] [--path /] [--connections N] [--timeout-ms T] [--warmup S]\n",
            why);
    exit(to == stdout ? 0 : 2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host-header", 1, 0, 'H'}, {"addr", 1, 0, 'a'},     {"port", 1, 0, 'p'},
        {"path", 1, 0, 'P'},        {"rate", 1, 0, 'r'},     {"connections", 1, 0, 'c'},
        {"duration", 1, 0, 'd'},    {"timeout-ms", 1, 0, 't'}, {"warmup", 1, 0, 'w'},
        {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'H': cfg.host = optarg; break;
        case 'a': cfg.addr = optarg; break;
        case 'p': cfg.port = (int)num_arg("port", optarg, 1, 65535); break;
        case 'P': cfg.path = optarg; break;
        case 'r': cfg.rate = num_arg("rate", optarg, 1e-3, 1e7); break;
        case 'c': cfg.conns = (int)num_arg("connections", optarg, 1, MAX_CONNS); break;
        case 'd': cfg.duration = num_arg("duration", optarg, 1e-3, 86400); break;
        case 't': cfg.timeout = (i64)(num_arg("timeout-ms", optarg, 1, 3600000) * MS); break;
        case 'w': cfg.warmup = num_arg("warmup", optarg, 0, 86400); break;
        case 'h': usage(stdout, "an open-loop constant-rate HTTP/1.1 load generator");
        default: usage(stderr, optopt ? "unknown option or missing value" : "unknown option");
        }
    }
    if (optind < argc)
        usage(stderr, "unexpected positional argument");
    if (!cfg.addr || !cfg.port || cfg.rate <= 0 || cfg.duration <= 0)
        usage(stderr, "--addr, --port, --rate and --duration are required");
    if (!cfg.host)
        cfg.host = cfg.addr;
    if (cfg.path[0] != '/' || strpbrk(cfg.path, " \r\n") || strpbrk(cfg.host, "\r\n"))
        usage(stderr, "--path must start with / and have no spaces; no line breaks in --host-header");
    int n = snprintf(cfg.req, sizeof cfg.req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", cfg.path,
                     cfg.host);
    if (n < 0 || (size_t)n >= sizeof cfg.req)
        usage(stderr, "--path and --host-header are too long");
    cfg.reqlen = (size_t)n;
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg.port);
    if (getaddrinfo(cfg.addr, port, &hints, &ai) != 0)
        die("--addr %s: not an IP address", cfg.addr);
    memcpy(&cfg.sa, ai->ai_addr, ai->ai_addrlen);
    cfg.salen = ai->ai_addrlen;
    freeaddrinfo(ai);
}

/* Every connection is made before t0: failing here is a setup error (exit 2), not a result. */
static void connect_all(void)
{
    for (int k = 0; k < cfg.conns; k++) {
        conn_t *c = &conns[k];
        c->fd = socket(cfg.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            fprintf(stderr, "paced_load: socket: %s (connection %d of %d)\n", strerror(errno),
                    k + 1, cfg.conns);
            exit(2);
        }
        int one = 1, err = 0;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&cfg.sa, cfg.salen) < 0) {
            err = errno;
            if (err == EINPROGRESS) {
                struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
                int r = poll(&pfd, 1, (int)(cfg.timeout / MS));
                socklen_t len = sizeof err;
                if (r == 0)
                    err = ETIMEDOUT;
                else if (r < 0 || getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                    err = errno;
            }
        }
        if (err) {
            fprintf(stderr, "paced_load: cannot connect to %s port %d: %s (connection %d of %d)\n",
                    cfg.addr, cfg.port, strerror(err), k + 1, cfg.conns);
            exit(2);
        }
        ep_set(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_ADD);
        push_idle(c);
    }
}

/* Wait for I/O until `at` (absolute CLOCK_MONOTONIC ns): epoll_pwait2 (Linux >= 5.11) takes a
 * ns timeout, one syscall per wake-up; older kernels get a timerfd armed at `at`. */
static int wait_events(struct epoll_event *evs, int max, i64 at)
{
    static int use_timerfd;
    static i64 armed = -1;
    int n;
#ifdef SYS_epoll_pwait2
    if (!use_timerfd) {
        i64 d = at - now_ns();
        struct timespec ts = {.tv_sec = d > 0 ? d / SEC : 0, .tv_nsec = d > 0 ? d % SEC : 0};
        n = (int)syscall(SYS_epoll_pwait2, ep, evs, max, &ts, NULL, 0);
        if (n >= 0 || errno != ENOSYS)
            return n;
    }
#endif
    if (!use_timerfd) {
        use_timerfd = 1;
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
        if (tfd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0) {
            perror("paced_load: timerfd");
            exit(1);
        }
    }
    if (at != armed) {
        struct itimerspec its = {.it_value = {.tv_sec = at / SEC, .tv_nsec = at % SEC}};
        if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
            perror("paced_load: timerfd_settime");
            exit(1);
        }
        armed = at;
    }
    n = epoll_wait(ep, evs, max, -1);
    for (int k = 0; k < n; k++) {
        if (evs[k].data.u64 == TIMER_TAG) {
            uint64_t ticks;
            if (read(tfd, &ticks, sizeof ticks) > 0)
                armed = -1;
            evs[k--] = evs[--n];
        }
    }
    return n;
}

static void print_hist(const char *prefix, const hist_t *h)
{
    static const struct { const char *key; double p; } ps[] = {
        {"p50_us", 50}, {"p90_us", 90}, {"p99_us", 99}, {"p999_us", 99.9}};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
        printf(",\"%s%s\":%.0f", prefix, ps[k].key, (double)h_percentile(h, ps[k].p) / 1e3);
    printf(",\"%smax_us\":%.0f,\"%smean_us\":%.1f", prefix, (double)h->max / 1e3, prefix,
           h->n ? (double)h->sum / (double)h->n / 1e3 : 0.0);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake-ups to the µs, not the default 50 µs */
    conns = calloc((size_t)cfg.conns, sizeof *conns);
    ring = calloc((size_t)cfg.conns, sizeof *ring);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !ring || ep < 0) {
        perror("paced_load: setup");
        return 1;
    }
    for (int k = 0; k < cfg.conns; k++) {
        conns[k].fd = -1;
        conns[k].buf = malloc(BUF_SIZE);
        if (!conns[k].buf) {
            perror("paced_load: malloc");
            return 1;
        }
    }
    connect_all();

    period_ns = 1e9 / cfg.rate;
    t0 = now_ns() + MS;
    tw = t0 + (i64)llround(cfg.warmup * 1e9);
    te = tw + (i64)llround(cfg.duration * 1e9);
    for (i_w = (int64_t)(cfg.warmup * cfg.rate) - 1; i_w < 0 || slot_time(i_w) < tw; i_w++)
        ;
    i64 next_hk = t0 + HOUSEKEEP_NS, drain_until = 0, at = t0;
    int64_t dropped = 0;
    struct epoll_event evs[256];
    for (;;) {
        int n = wait_events(evs, 256, at);
        if (n < 0 && errno != EINTR) {
            perror("paced_load: epoll_wait");
            return 1;
        }
        i64 now = now_ns();
        for (int k = 0; k < n; k++)
            on_event(&evs[k], now);
        now = now_ns();
        if (now >= next_hk) {
            housekeep(now);
            next_hk = now + HOUSEKEEP_NS;
        }
        if (!draining && now >= te) {
            dispatch(now); /* release the window's last slots */
            draining = 1;
            drain_until = now + cfg.timeout;
        }
        dispatch(now);
        if (draining && ((inflight == 0 && next_send == released) || now >= drain_until)) {
            dropped = released - (next_send > i_w ? next_send : i_w);
            for (int k = 0; k < cfg.conns; k++) { /* unanswered: timed out, or cut short */
                conn_t *c = &conns[k];
                if (c->state == C_BUSY && c->slot_t >= tw && now - c->sent_t > cfg.timeout)
                    st.timeout++;
                else if (c->state == C_BUSY && c->slot_t >= tw)
                    dropped++;
            }
            break;
        }
        at = draining ? drain_until : te;
        if (next_hk < at)
            at = next_hk;
        if (!draining && next_send == released && slot_time(released) < at)
            at = slot_time(released); /* nothing queued: wake for the next slot */
    }
    printf("PACEDJSON {\"requests\":%llu,\"duration_us\":%lld,\"non2xx\":%llu,\"status\":%llu,"
           "\"connect\":%llu,\"read\":%llu,\"write\":%llu,\"timeout\":%llu,\"late\":%llu,"
           "\"sent\":%llu,\"dropped\":%lld,\"rate\":%.3f,\"connections\":%d",
           (unsigned long long)st.requests, (long long)((te - tw) / 1000),
           (unsigned long long)st.non2xx, (unsigned long long)st.status,
           (unsigned long long)st.connect, (unsigned long long)st.read,
           (unsigned long long)st.write, (unsigned long long)st.timeout,
           (unsigned long long)st.late, (unsigned long long)st.sent, (long long)dropped, cfg.rate,
           cfg.conns);
    print_hist("", &corrected);
    print_hist("sent_", &sent);
    printf("}\n");
    return 0;
}
