// DP16KD: behavioural model of the Lattice ECP5 16-kbit true dual-port block RAM, for simulating
// netlists (Yosys ships it only as a blackbox). Written from Lattice's documented behaviour
// (ECP5 and ECP5-5G sysMEM Usage Guide, FPGA-TN-02204; ECP5 family data sheet, "sysMEM Memory")
// and the conventions of Yosys's own mapping (techlibs/lattice/brams_map_16kd.v). Tested against
// the RTL memories it replaces by tests/test_gatesim.py (docs/gatelevel.md).
//
// Contents: 1024 words of 18 bits (two 9-bit bytes: 8 data bits and a parity bit each).
//   DATA_WIDTH 18: word AD[13:4]; on a write AD[1:0] are byte enables (AD0: bits 8:0, AD1: 17:9).
//   DATA_WIDTH 9:  byte AD[13:3] (byte AD[3] of word AD[13:4]).
//   DATA_WIDTH 4, 2, 1: AD[13:2], AD[13:1], AD[13:0] index the 16384 data bits (parity bits are
//                  not reachable), 8 to a byte: bit d is bit d%8 of byte d/8.
//   DATA_WIDTH 36 (pseudo dual port, as Yosys maps PDPW16KD): DATA_WIDTH_A 36: port A writes
//                  DI{B,A} at word pair AD[13:5] (words 2p, 2p+1) with byte enables ADA[3:0], and
//                  port B only reads; DATA_WIDTH_B 36: port B reads the pair onto DO{B,A}.
// Each port, on the active clock edge (CLKxMUX "INV": the falling edge), when CE and CS[2:0] ==
// CSDECODE: writes when WE, and updates its read latch: on a read with the addressed data; on a
// write per WRITEMODE: NORMAL keeps it, WRITETHROUGH shows the new data, READBEFOREWRITE the old.
// REGMODE NOREG drives DO from the latch; OUTREG from a register after it, loaded when OCE.
// RST clears the latch and the output register: at the clock edge whatever CE and CS say
// (RESETMODE SYNC; a write in that cycle is blocked), or at once (ASYNC). Bits above DATA_WIDTH
// read 0. Both ports writing one address in the same cycle, or one reading what the other writes,
// gives an unspecified result on the board; here the port B write lands last.
// Initial contents: INITVAL_00..3F, 16 words of 20 bits each (18 used), word 0 lowest; the
// latches and output registers start at 0 (GSR).
module DP16KD(
  input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
  input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
  input CEA, OCEA, CLKA, WEA, RSTA,
  input CSA2, CSA1, CSA0,
  output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
  input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
  input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
  input CEB, OCEB, CLKB, WEB, RSTB,
  input CSB2, CSB1, CSB0,
  output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
  parameter DATA_WIDTH_A = 18;
  parameter DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG";
  parameter REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC";
  parameter ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000";
  parameter CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL";
  parameter WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA";
  parameter CLKBMUX = "CLKB";
  parameter GSR = "ENABLED";
  parameter INIT_DATA = "STATIC";
  parameter INITVAL_00 = 320'h0;
  parameter INITVAL_01 = 320'h0;
  parameter INITVAL_02 = 320'h0;
  parameter INITVAL_03 = 320'h0;
  parameter INITVAL_04 = 320'h0;
  parameter INITVAL_05 = 320'h0;
  parameter INITVAL_06 = 320'h0;
  parameter INITVAL_07 = 320'h0;
  parameter INITVAL_08 = 320'h0;
  parameter INITVAL_09 = 320'h0;
  parameter INITVAL_0A = 320'h0;
  parameter INITVAL_0B = 320'h0;
  parameter INITVAL_0C = 320'h0;
  parameter INITVAL_0D = 320'h0;
  parameter INITVAL_0E = 320'h0;
  parameter INITVAL_0F = 320'h0;
  parameter INITVAL_10 = 320'h0;
  parameter INITVAL_11 = 320'h0;
  parameter INITVAL_12 = 320'h0;
  parameter INITVAL_13 = 320'h0;
  parameter INITVAL_14 = 320'h0;
  parameter INITVAL_15 = 320'h0;
  parameter INITVAL_16 = 320'h0;
  parameter INITVAL_17 = 320'h0;
  parameter INITVAL_18 = 320'h0;
  parameter INITVAL_19 = 320'h0;
  parameter INITVAL_1A = 320'h0;
  parameter INITVAL_1B = 320'h0;
  parameter INITVAL_1C = 320'h0;
  parameter INITVAL_1D = 320'h0;
  parameter INITVAL_1E = 320'h0;
  parameter INITVAL_1F = 320'h0;
  parameter INITVAL_20 = 320'h0;
  parameter INITVAL_21 = 320'h0;
  parameter INITVAL_22 = 320'h0;
  parameter INITVAL_23 = 320'h0;
  parameter INITVAL_24 = 320'h0;
  parameter INITVAL_25 = 320'h0;
  parameter INITVAL_26 = 320'h0;
  parameter INITVAL_27 = 320'h0;
  parameter INITVAL_28 = 320'h0;
  parameter INITVAL_29 = 320'h0;
  parameter INITVAL_2A = 320'h0;
  parameter INITVAL_2B = 320'h0;
  parameter INITVAL_2C = 320'h0;
  parameter INITVAL_2D = 320'h0;
  parameter INITVAL_2E = 320'h0;
  parameter INITVAL_2F = 320'h0;
  parameter INITVAL_30 = 320'h0;
  parameter INITVAL_31 = 320'h0;
  parameter INITVAL_32 = 320'h0;
  parameter INITVAL_33 = 320'h0;
  parameter INITVAL_34 = 320'h0;
  parameter INITVAL_35 = 320'h0;
  parameter INITVAL_36 = 320'h0;
  parameter INITVAL_37 = 320'h0;
  parameter INITVAL_38 = 320'h0;
  parameter INITVAL_39 = 320'h0;
  parameter INITVAL_3A = 320'h0;
  parameter INITVAL_3B = 320'h0;
  parameter INITVAL_3C = 320'h0;
  parameter INITVAL_3D = 320'h0;
  parameter INITVAL_3E = 320'h0;
  parameter INITVAL_3F = 320'h0;

  localparam [2:0] CSA_MATCH = CSDECODE_A == "0b001" ? 3'd1 : CSDECODE_A == "0b010" ? 3'd2 :
                               CSDECODE_A == "0b011" ? 3'd3 : CSDECODE_A == "0b100" ? 3'd4 :
                               CSDECODE_A == "0b101" ? 3'd5 : CSDECODE_A == "0b110" ? 3'd6 :
                               CSDECODE_A == "0b111" ? 3'd7 : 3'd0;
  localparam [2:0] CSB_MATCH = CSDECODE_B == "0b001" ? 3'd1 : CSDECODE_B == "0b010" ? 3'd2 :
                               CSDECODE_B == "0b011" ? 3'd3 : CSDECODE_B == "0b100" ? 3'd4 :
                               CSDECODE_B == "0b101" ? 3'd5 : CSDECODE_B == "0b110" ? 3'd6 :
                               CSDECODE_B == "0b111" ? 3'd7 : 3'd0;
  localparam PDP = DATA_WIDTH_A == 36 || DATA_WIDTH_B == 36;

  wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
  wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
  wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
  wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
  wire csa = {CSA2, CSA1, CSA0} == CSA_MATCH;
  wire csb = {CSB2, CSB1, CSB0} == CSB_MATCH;
  wire clka = CLKAMUX == "INV" ? ~CLKA : CLKA;
  wire clkb = CLKBMUX == "INV" ? ~CLKB : CLKB;

  reg [17:0] mem [0:1023];

  function [319:0] initval;
    input integer i;
    case (i)
      0: initval = INITVAL_00;
      1: initval = INITVAL_01;
      2: initval = INITVAL_02;
      3: initval = INITVAL_03;
      4: initval = INITVAL_04;
      5: initval = INITVAL_05;
      6: initval = INITVAL_06;
      7: initval = INITVAL_07;
      8: initval = INITVAL_08;
      9: initval = INITVAL_09;
      10: initval = INITVAL_0A;
      11: initval = INITVAL_0B;
      12: initval = INITVAL_0C;
      13: initval = INITVAL_0D;
      14: initval = INITVAL_0E;
      15: initval = INITVAL_0F;
      16: initval = INITVAL_10;
      17: initval = INITVAL_11;
      18: initval = INITVAL_12;
      19: initval = INITVAL_13;
      20: initval = INITVAL_14;
      21: initval = INITVAL_15;
      22: initval = INITVAL_16;
      23: initval = INITVAL_17;
      24: initval = INITVAL_18;
      25: initval = INITVAL_19;
      26: initval = INITVAL_1A;
      27: initval = INITVAL_1B;
      28: initval = INITVAL_1C;
      29: initval = INITVAL_1D;
      30: initval = INITVAL_1E;
      31: initval = INITVAL_1F;
      32: initval = INITVAL_20;
      33: initval = INITVAL_21;
      34: initval = INITVAL_22;
      35: initval = INITVAL_23;
      36: initval = INITVAL_24;
      37: initval = INITVAL_25;
      38: initval = INITVAL_26;
      39: initval = INITVAL_27;
      40: initval = INITVAL_28;
      41: initval = INITVAL_29;
      42: initval = INITVAL_2A;
      43: initval = INITVAL_2B;
      44: initval = INITVAL_2C;
      45: initval = INITVAL_2D;
      46: initval = INITVAL_2E;
      47: initval = INITVAL_2F;
      48: initval = INITVAL_30;
      49: initval = INITVAL_31;
      50: initval = INITVAL_32;
      51: initval = INITVAL_33;
      52: initval = INITVAL_34;
      53: initval = INITVAL_35;
      54: initval = INITVAL_36;
      55: initval = INITVAL_37;
      56: initval = INITVAL_38;
      57: initval = INITVAL_39;
      58: initval = INITVAL_3A;
      59: initval = INITVAL_3B;
      60: initval = INITVAL_3C;
      61: initval = INITVAL_3D;
      62: initval = INITVAL_3E;
      63: initval = INITVAL_3F;
      default: initval = 320'h0;
    endcase
  endfunction

  integer k;
  initial begin
    for (k = 0; k < 1024; k = k + 1)
      mem[k] = initval(k / 16) >> ((k % 16) * 20);
  end

  // the bit offset in an 18-bit word of a narrow (1, 2, 4 or 9 bit) access at address ad
  function [4:0] offset;
    input integer width;
    input [13:0] ad;
    case (width)
      9: offset = ad[3] ? 5'd9 : 5'd0;
      4: offset = (ad[3] ? 5'd9 : 5'd0) + {ad[2], 2'b00};
      2: offset = (ad[3] ? 5'd9 : 5'd0) + {ad[2:1], 1'b0};
      default: offset = (ad[3] ? 5'd9 : 5'd0) + ad[2:0];
    endcase
  endfunction

  function [17:0] ones;
    input integer width;
    ones = width >= 18 ? 18'h3FFFF : (18'h1 << width) - 18'h1;
  endfunction

  // what a port of the given width reads at ad (bits 35:18 only in the 36-bit mode)
  function [35:0] read_word;
    input integer width;
    input [13:0] ad;
    if (width == 36) read_word = {mem[{ad[13:5], 1'b1}], mem[{ad[13:5], 1'b0}]};
    else if (width == 18) read_word = {18'h0, mem[ad[13:4]]};
    else read_word = {18'h0, (mem[ad[13:4]] >> offset(width, ad)) & ones(width)};
  endfunction

  // port A
  reg [35:0] latch_a = 36'h0, out_a = 36'h0;
  wire [35:0] data_a = {dib, dia};
  generate if (RESETMODE == "ASYNC") begin : async_a
    always @(posedge clka or posedge RSTA)
      if (RSTA) latch_a <= 36'h0; else if (CEA && csa) port_a();
  end else begin : sync_a
    always @(posedge clka)
      if (RSTA) latch_a <= 36'h0; else if (CEA && csa) port_a();
  end endgenerate

  task port_a;
    reg [35:0] old;
    begin
      old = read_word(DATA_WIDTH_A, ada);
      if (WEA) store(DATA_WIDTH_A, ada, data_a);
      if (!WEA) latch_a <= old;
      else if (WRITEMODE_A == "WRITETHROUGH") latch_a <= read_word(DATA_WIDTH_A, ada);
      else if (WRITEMODE_A == "READBEFOREWRITE") latch_a <= old;
    end
  endtask

  // port B
  reg [35:0] latch_b = 36'h0, out_b = 36'h0;
  wire [35:0] data_b = {18'h0, dib};
  generate if (RESETMODE == "ASYNC") begin : async_b
    always @(posedge clkb or posedge RSTB)
      if (RSTB) latch_b <= 36'h0; else if (CEB && csb) port_b();
  end else begin : sync_b
    always @(posedge clkb)
      if (RSTB) latch_b <= 36'h0; else if (CEB && csb) port_b();
  end endgenerate

  task port_b;
    reg [35:0] old;
    begin
      old = read_word(DATA_WIDTH_B, adb);
      if (WEB && !PDP) store(DATA_WIDTH_B, adb, data_b);
      if (!WEB || PDP) latch_b <= old;
      else if (WRITEMODE_B == "WRITETHROUGH") latch_b <= read_word(DATA_WIDTH_B, adb);
      else if (WRITEMODE_B == "READBEFOREWRITE") latch_b <= old;
    end
  endtask

  task store;
    input integer width;
    input [13:0] ad;
    input [35:0] d;
    reg [17:0] m;
    begin
      if (width == 36) begin
        m = {{9{ad[1]}}, {9{ad[0]}}};
        mem[{ad[13:5], 1'b0}] = (mem[{ad[13:5], 1'b0}] & ~m) | (d[17:0] & m);
        m = {{9{ad[3]}}, {9{ad[2]}}};
        mem[{ad[13:5], 1'b1}] = (mem[{ad[13:5], 1'b1}] & ~m) | (d[35:18] & m);
      end else if (width == 18) begin
        m = {{9{ad[1]}}, {9{ad[0]}}};
        mem[ad[13:4]] = (mem[ad[13:4]] & ~m) | (d[17:0] & m);
      end else begin
        m = ones(width) << offset(width, ad);
        mem[ad[13:4]] = (mem[ad[13:4]] & ~m) | ((d[17:0] << offset(width, ad)) & m);
      end
    end
  endtask

  // output registers (REGMODE OUTREG), cleared with the latches
  generate if (RESETMODE == "ASYNC") begin : async_out
    always @(posedge clka or posedge RSTA) if (RSTA) out_a <= 36'h0; else if (OCEA) out_a <= latch_a;
    always @(posedge clkb or posedge RSTB) if (RSTB) out_b <= 36'h0; else if (OCEB) out_b <= latch_b;
  end else begin : sync_out
    always @(posedge clka) if (RSTA) out_a <= 36'h0; else if (OCEA) out_a <= latch_a;
    always @(posedge clkb) if (RSTB) out_b <= 36'h0; else if (OCEB) out_b <= latch_b;
  end endgenerate

  wire [35:0] q_a = REGMODE_A == "OUTREG" ? out_a : latch_a;
  wire [35:0] q_b = REGMODE_B == "OUTREG" ? out_b : latch_b;
  // a 36-bit read on port B drives both outputs: DOA the low half, DOB the high half
  wire [17:0] doa = DATA_WIDTH_B == 36 ? q_b[17:0] : q_a[17:0] & ones(DATA_WIDTH_A);
  wire [17:0] dob = DATA_WIDTH_B == 36 ? q_b[35:18] : q_b[17:0] & ones(DATA_WIDTH_B);
  assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = doa;
  assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = dob;
endmodule
