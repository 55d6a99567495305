// Tritium fast device simulation: a Verilator C++ harness around any device top whose link is a
// pair of byte streams (Amaranth `rx: In(stream.Signature(8))`, `tx: Out(stream.Signature(8))`).
//
// Built by tritium.sim.fastsim (which writes `ports.h` for the top it wraps); no Python runs per
// clock. Two modes:
//
//   serve  --pty-file F [--parent-pid P]   open a pseudo-terminal, write its path to F, and carry
//          bytes between it and the device until SIGTERM/SIGINT, the host closing its side, or
//          the parent process going away.
//   batch  --in F --out G [--stamps H]     feed the bytes of F as fast as the device takes them,
//          run until the device is idle again, write its reply bytes to G (and, with --stamps,
//          each reply byte's clock cycle as a little-endian uint64 to H).
//
// Both print one JSON line of statistics (cycles, seconds, bytes) on stdout at exit.
//
// Cycle model (the same as sim/tb_device.py under cocotb): one clock period is 10 ns; inputs
// change after the falling edge; a byte is taken on `rx` (and given on `tx`, whose `ready` is
// always 1) at the rising edge where valid & ready. Simulated time advances only while the device
// has something to do: while the device waits on the host (idle between frames, or part-way
// through a frame with no byte pending) the harness blocks on the pty instead, so a slow host
// never trips the device's inter-byte timeout. A host quiet for --quiet-ms part-way through a
// frame gets the timeout run out (--timeout-cycles), as a board would after its host went away.
// `busy` and `in_frame` are optional ports: without `busy` the device counts as busy until
// --settle-cycles pass with no byte either way; without `in_frame`, every host pause of --quiet-ms
// runs --timeout-cycles (the device may have a timeout the harness cannot see).
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <memory>
#include <poll.h>
#include <string>
#include <termios.h>
#include <unistd.h>
#include <vector>

#include "verilated.h"
#include "ports.h"  // generated: DUT class, TOP_HEADER, port names and which optional ports exist
#include TOP_HEADER
#if HARNESS_WAVES == 1
#include "verilated_fst_c.h"
typedef VerilatedFstC Trace;
#elif HARNESS_WAVES == 2
#include "verilated_vcd_c.h"
typedef VerilatedVcdC Trace;
#endif

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int) { g_stop = 1; }

static double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char* what) {
    std::fprintf(stderr, "device_harness: %s: %s\n", what, std::strerror(errno));
    std::exit(2);
}

struct Harness {
    std::unique_ptr<VerilatedContext> ctx{new VerilatedContext};
    std::unique_ptr<DUT> top;
#ifdef HARNESS_WAVES
    std::unique_ptr<Trace> trace;
    uint64_t waves_from = 0, waves_until = UINT64_MAX;
#endif
    uint64_t cycle = 0;
    // request bytes received from the host and not yet taken by the device
    std::vector<uint8_t> pending;
    size_t head = 0;
    std::vector<uint8_t> out;            // reply bytes not yet handed to the host
    std::vector<uint64_t>* stamps = nullptr;
    bool busy = false, in_frame = false; // sampled before the last rising edge
    uint64_t rx_bytes = 0, tx_bytes = 0;
    // with an `activity` port (bit 0: a generation runs, bit 1: the engine is busy, bit 2: the
    // vector unit is busy): cycles of generation, of engine work, of vector work beside no engine work
    uint64_t gen_cycles = 0, engine_cycles = 0, vector_cycles = 0;
    // without a busy port: busy until `settle` cycles have passed with no byte either way
    uint64_t settle = 4096, last_activity = 0;

    Harness() : top(new DUT{ctx.get()}) {}

    bool pending_empty() const { return head == pending.size(); }

    void dump(uint64_t t) {
#ifdef HARNESS_WAVES
        if (trace && cycle >= waves_from && cycle < waves_until) trace->dump(t);
#else
        (void)t;
#endif
    }

    // One clock period. Returns whether a byte was offered on rx.
    bool step() {
        bool offered = !pending_empty();
        top->PORT_RX_VALID = offered;
        if (offered) top->PORT_RX_PAYLOAD = pending[head];
        top->eval();  // settle with the new inputs, clock low
        dump(cycle * 10);
        if (offered && top->PORT_RX_READY) {
            ++head;
            ++rx_bytes;
            last_activity = cycle;
            if (head == pending.size()) { pending.clear(); head = 0; }
        }
        if (top->PORT_TX_VALID) {
            out.push_back(static_cast<uint8_t>(top->PORT_TX_PAYLOAD));
            ++tx_bytes;
            last_activity = cycle;
            if (stamps) stamps->push_back(cycle);
        }
#if HAS_BUSY
        busy = top->PORT_BUSY;
#else
        busy = cycle - last_activity < settle;
#endif
#if HAS_ACTIVITY
        {
            unsigned a = top->PORT_ACTIVITY;
            if (a & 1) {
                ++gen_cycles;
                if (a & 2) ++engine_cycles;
                else if (a & 4) ++vector_cycles;
            }
        }
#endif
#if HAS_IN_FRAME
        in_frame = top->PORT_IN_FRAME;
#else
        in_frame = true;
#endif
        top->clk = 1;
        top->eval();
        dump(cycle * 10 + 5);
        top->clk = 0;
        ++cycle;
        return offered;
    }

    void reset() {
        top->clk = 0;
        top->rst = 1;
        top->PORT_RX_VALID = 0;
        top->PORT_TX_READY = 1;
        top->eval();
        for (int i = 0; i < 2; ++i) {
            top->clk = 1; top->eval(); top->clk = 0; top->eval();
        }
        top->rst = 0;
        top->eval();
    }
};

static void write_all(int fd, const uint8_t* p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                pollfd pfd{fd, POLLOUT, 0};
                poll(&pfd, 1, 100);
                if (g_stop) return;
                continue;
            }
            if (errno == EIO) return;  // the host closed its side: the reply has nowhere to go
            die("write to the pty");
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
}

static void print_stats(const Harness& h, const char* mode, double seconds) {
    std::printf("{\"mode\": \"%s\", \"cycles\": %llu, \"seconds\": %.6f, \"cycles_per_second\": %.0f, "
                "\"rx_bytes\": %llu, \"tx_bytes\": %llu",
                mode, (unsigned long long)h.cycle, seconds, seconds > 0 ? h.cycle / seconds : 0.0,
                (unsigned long long)h.rx_bytes, (unsigned long long)h.tx_bytes);
#if HAS_ACTIVITY
    std::printf(", \"generate_cycles\": %llu, \"engine_cycles\": %llu, \"vector_cycles\": %llu",
                (unsigned long long)h.gen_cycles, (unsigned long long)h.engine_cycles,
                (unsigned long long)h.vector_cycles);
#endif
    std::printf("}\n");
    std::fflush(stdout);
}

static std::vector<uint8_t> read_file(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) die(path);
    std::vector<uint8_t> data;
    uint8_t buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + n);
    std::fclose(f);
    return data;
}

static void write_file(const char* path, const void* data, size_t n) {
    FILE* f = std::fopen(path, "wb");
    if (!f || std::fwrite(data, 1, n, f) != n || std::fclose(f) != 0) die(path);
}

// Batch mode: the whole input offered back to back; ends once every byte is taken and the device
// is idle (not busy, or, without a busy port, no reply byte for `settle` cycles).
static int run_batch(Harness& h, const char* in, const char* outp, const char* stampp) {
    h.pending = read_file(in);
    std::vector<uint64_t> stamps;
    if (stampp) h.stamps = &stamps;
    double t0 = now_s();
    while (!g_stop) {
        bool offered = h.step();
        if (!offered && !h.busy) break;
    }
    double dt = now_s() - t0;
    write_file(outp, h.out.data(), h.out.size());
    if (stampp) write_file(stampp, stamps.data(), stamps.size() * sizeof(uint64_t));
    print_stats(h, "batch", dt);
    return 0;
}

static int open_pty(int* slave_out, std::string* name) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) die("posix_openpt");
    const char* sname = ptsname(master);
    if (!sname) die("ptsname");
    *name = sname;
    // keep our own handle on the terminal side, in raw mode, so the pty outlives host reconnects
    int slave = open(sname, O_RDWR | O_NOCTTY);
    if (slave < 0) die("open the pty");
    termios tio;
    if (tcgetattr(slave, &tio) != 0) die("tcgetattr");
    cfmakeraw(&tio);
    if (tcsetattr(slave, TCSANOW, &tio) != 0) die("tcsetattr");
    int fl = fcntl(master, F_GETFL);
    fcntl(master, F_SETFL, fl | O_NONBLOCK);
    *slave_out = slave;
    return master;
}

static int run_serve(Harness& h, const char* pty_file, long parent, int quiet_ms, uint64_t timeout_cycles) {
    int slave;
    std::string name;
    int master = open_pty(&slave, &name);
    {
        std::string tmp = std::string(pty_file) + ".tmp";
        write_file(tmp.c_str(), name.data(), name.size());
        if (rename(tmp.c_str(), pty_file) != 0) die("rename the pty file");
    }
    std::fprintf(stderr, "device_harness: device on %s\n", name.c_str());
    double busy_s = 0;  // wall time spent simulating (not blocked on the host)
    std::vector<uint8_t> buf(1 << 16);
    const uint64_t burst = 4096;
    bool waiting = true;
    bool host_gone = false;
    while (!g_stop && !host_gone) {
        if (parent > 0 && getppid() != parent) break;  // the host process died without closing us
        // replies go out as they are made (a generation streams its tokens while it runs)
        if (!h.out.empty() && (h.pending_empty() || h.out.size() >= 4096)) {
            write_all(master, h.out.data(), h.out.size());
            h.out.clear();
        }
        bool timing_out = false;
        if (h.pending_empty()) {
            pollfd pfd{master, POLLIN, 0};
            int r = poll(&pfd, 1, waiting ? quiet_ms : 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                die("poll");
            }
            if (r > 0 && (pfd.revents & POLLIN)) {
                ssize_t n = read(master, buf.data(), buf.size());
                if (n > 0) {
                    h.pending.insert(h.pending.end(), buf.begin(), buf.begin() + n);
                } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                    host_gone = true;
                    continue;
                }
            } else if (r > 0) {
                usleep(1000);  // POLLHUP/POLLERR without data: nothing to take yet
                continue;
            } else if (waiting && !h.in_frame) {
                continue;  // idle device, quiet host
            } else if (waiting) {
                timing_out = true;  // quiet host part-way through a frame: run the timeout out
            }
        }
        double t0 = now_s();
        uint64_t limit = timing_out ? timeout_cycles + 256 : burst;
        for (uint64_t i = 0; i < limit; ++i) {
            bool offered = h.step();
            waiting = !offered && (!h.busy || (HAS_IN_FRAME && h.in_frame));
            if (waiting && !timing_out) break;
            if (timing_out && !h.busy) break;
            // a device that is busy with nothing pending: look for more input now and then
            if (!timing_out && h.pending_empty() && (i & 1023) == 1023) break;
        }
        busy_s += now_s() - t0;
    }
    if (!h.out.empty() && !host_gone) write_all(master, h.out.data(), h.out.size());
    print_stats(h, "serve", busy_s);
    close(slave);
    close(master);
    return 0;
}

static void usage() {
    std::fprintf(stderr,
                 "usage: device_harness (--pty-file F [--parent-pid P] | --in F --out G [--stamps H])\n"
                 "       [--timeout-cycles N] [--quiet-ms N] [--settle-cycles N]"
#ifdef HARNESS_WAVES
                 " [--waves FILE] [--waves-from CYCLE] [--waves-cycles N]"
#endif
                 "\n");
    std::exit(2);
}

int main(int argc, char** argv) {
    const char *pty_file = nullptr, *in = nullptr, *outp = nullptr, *stampp = nullptr;
    long parent = 0;
    int quiet_ms = 500;
    uint64_t timeout_cycles = 4096, settle = 4096;
#ifdef HARNESS_WAVES
    const char* waves = nullptr;
    uint64_t waves_from = 0, waves_cycles = UINT64_MAX;
#endif
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc) usage();
        const char* v = argv[++i];
        if (a == "--pty-file") pty_file = v;
        else if (a == "--parent-pid") parent = std::strtol(v, nullptr, 10);
        else if (a == "--in") in = v;
        else if (a == "--out") outp = v;
        else if (a == "--stamps") stampp = v;
        else if (a == "--quiet-ms") quiet_ms = std::atoi(v);
        else if (a == "--timeout-cycles") timeout_cycles = std::strtoull(v, nullptr, 10);
        else if (a == "--settle-cycles") settle = std::strtoull(v, nullptr, 10);
#ifdef HARNESS_WAVES
        else if (a == "--waves") waves = v;
        else if (a == "--waves-from") waves_from = std::strtoull(v, nullptr, 10);
        else if (a == "--waves-cycles") waves_cycles = std::strtoull(v, nullptr, 10);
#endif
        else usage();
    }
    if (!pty_file == !(in && outp)) usage();
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    Harness h;
#ifdef HARNESS_WAVES
    if (waves) {
        h.ctx->traceEverOn(true);
        h.trace.reset(new Trace);
        h.top->trace(h.trace.get(), 99);
        h.trace->open(waves);
        h.waves_from = waves_from;
        h.waves_until = waves_cycles == UINT64_MAX ? UINT64_MAX : waves_from + waves_cycles;
    }
#endif
    h.reset();
    h.settle = settle;
    int rc = pty_file ? run_serve(h, pty_file, parent, quiet_ms, timeout_cycles)
                      : run_batch(h, in, outp, stampp);
    h.top->final();
#ifdef HARNESS_WAVES
    if (h.trace) h.trace->close();
#endif
    return rc;
}
