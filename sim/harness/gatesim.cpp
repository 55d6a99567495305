// Tritium pin-level harness: a board top (its RTL, or the netlist Yosys synthesized for it) under
// Verilator, reached only through its pins, as a board's FTDI bridge reaches it.
//
// Built by tritium.sim.gatesim, which wraps the board top in `gatesim_tb` (ports clk, rx, tx and
// `pins`, every other top-level pin as an output) and defines DIVISOR (clock cycles per UART bit).
// The harness drives the clock, sends the host's bytes 8N1 on `rx` at the real baud (DIVISOR
// cycles a bit, back to back unless a gap is set), and decodes `tx` with a receiver that samples
// each bit in its middle, as the FTDI does. Simulated time advances only on command.
//
// Commands, one a line on stdin; each is answered by one line on stdout:
//   S <hex>          queue bytes to send on rx                         -> "ok <queued>"
//   G <bits>         idle bit times between sent bytes (default 0)     -> "ok <bits>"
//   R <n> <max>      run until n bytes have been received (n = 0: until every queued byte is sent
//                    and the tx line has been idle for 12 bit times) or max cycles have passed
//                                                  -> "<cycle> <pins> <frame_errors> <hex|->"
//   C <cycles>       run exactly this many cycles  -> same answer as R
//   X                exit                          -> "bye <cycle> <seconds>"
// The answer carries the clock cycle count, the other pins' levels (bit i = pin i of `pins`), the
// number of bytes received with a low stop bit, and every byte received since the last answer.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iostream>
#include <string>
#include <vector>

#include "verilated.h"
#include "Vgatesim_tb.h"

#ifndef DIVISOR
#error "DIVISOR (clock cycles per UART bit) must be defined"
#endif

namespace {

struct Line {
    Vgatesim_tb* top;
    uint64_t cycle = 0;
    // transmitter (host -> device rx)
    std::deque<uint8_t> queue;
    unsigned gap_bits = 0;
    int tx_bit = -1;          // -1 idle; 0 start, 1..8 data, 9 stop, 10.. gap
    unsigned tx_timer = 0;
    uint16_t tx_frame = 0;
    // receiver (device tx -> host)
    int rx_bit = -1;          // -1 waiting for a start bit
    unsigned rx_timer = 0;
    uint8_t rx_byte = 0;
    uint64_t rx_idle = 0;     // cycles the tx line has been idle with no byte in progress
    std::string received;
    unsigned frame_errors = 0;

    void step() {
        // inputs change while the clock is low; the design samples at the rising edge
        top->clk = 0;
        drive_rx();
        top->eval();
        top->clk = 1;
        top->eval();
        ++cycle;
        sample_tx();
    }

    void drive_rx() {
        if (tx_bit < 0) {
            if (queue.empty()) { top->rx = 1; return; }
            tx_frame = (uint16_t)((1u << 9) | ((unsigned)queue.front() << 1));  // start 0, data, stop 1
            queue.pop_front();
            tx_bit = 0;
            tx_timer = DIVISOR;
        }
        top->rx = tx_bit <= 9 ? (tx_frame >> tx_bit) & 1 : 1;
        if (--tx_timer == 0) {
            ++tx_bit;
            tx_timer = DIVISOR;
            if (tx_bit >= 10 + (int)gap_bits) tx_bit = -1;
        }
    }

    void sample_tx() {
        int level = top->tx & 1;
        if (rx_bit < 0) {
            if (level) { ++rx_idle; return; }
            rx_bit = 0;                       // start bit seen: sample bits in their middle
            rx_timer = DIVISOR + DIVISOR / 2;
            rx_byte = 0;
            rx_idle = 0;
            return;
        }
        if (--rx_timer) return;
        rx_timer = DIVISOR;
        if (rx_bit < 8) {
            rx_byte |= (uint8_t)(level << rx_bit);
            ++rx_bit;
            return;
        }
        if (level) received.push_back((char)rx_byte); else ++frame_errors;
        rx_bit = -1;
    }

    bool drained() const {
        return queue.empty() && tx_bit < 0 && rx_bit < 0 && rx_idle >= 12u * DIVISOR;
    }
};

void answer(Line& l) {
    static const char* hex = "0123456789abcdef";
    std::string out = std::to_string(l.cycle) + " " + std::to_string((unsigned long long)l.top->pins) + " " +
                      std::to_string(l.frame_errors) + " ";
    if (l.received.empty()) out += "-";
    for (unsigned char c : l.received) { out += hex[c >> 4]; out += hex[c & 15]; }
    l.received.clear();
    std::cout << out << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    Line l;
    l.top = new Vgatesim_tb;
    l.top->rx = 1;
    l.top->clk = 0;
    l.top->eval();
    auto t0 = std::chrono::steady_clock::now();
    std::string cmd;
    while (std::cin >> cmd) {
        if (cmd == "S") {
            std::string hex;
            std::cin >> hex;
            for (size_t i = 0; i + 1 < hex.size(); i += 2)
                l.queue.push_back((uint8_t)std::stoul(hex.substr(i, 2), nullptr, 16));
            std::cout << "ok " << l.queue.size() << std::endl;
        } else if (cmd == "G") {
            std::cin >> l.gap_bits;
            std::cout << "ok " << l.gap_bits << std::endl;
        } else if (cmd == "R") {
            uint64_t n, max;
            std::cin >> n >> max;
            uint64_t end = l.cycle + max;
            while (l.cycle < end) {
                if (n ? l.received.size() >= n : l.drained()) break;
                l.step();
            }
            answer(l);
        } else if (cmd == "C") {
            uint64_t cycles;
            std::cin >> cycles;
            for (uint64_t i = 0; i < cycles; ++i) l.step();
            answer(l);
        } else if (cmd == "X") {
            double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::cout << "bye " << l.cycle << " " << s << std::endl;
            break;
        } else {
            std::cerr << "gatesim: unknown command " << cmd << std::endl;
            return 2;
        }
    }
    l.top->final();
    delete l.top;
    return 0;
}
