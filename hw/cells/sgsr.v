// SGSR: the ECP5's synchronous global set/reset, for simulating netlists (Yosys ships it only as a
// blackbox). On the chip, GSR low sets or resets every flip-flop whose GSR attribute is enabled,
// synchronously to CLK. Yosys's TRELLIS_FF simulation model starts at its init value (as after
// configuration, PUR) and has no global reset input, so in simulation there is nothing for GSR to
// drive: this model only completes the netlist. Amaranth's ECP5 platform drives it from two
// flip-flops that release it two cycles after configuration; the gate-level harness sends nothing
// in the first 1 ms, so those cycles need no modelling. (tests/test_gatesim.py, docs/gatelevel.md)
module SGSR(input GSR, input CLK);
endmodule
