"""The golden device: the link protocol's reference behaviour, byte for byte, in Python.

:class:`DeviceModel` consumes request bytes and produces reply bytes exactly as the gateware
device (:class:`tritium.hw.device.LinkDevice`) does; the gateware is tested against it with
byte equality, and the host's ``golden`` transport talks to it. With an :class:`LMParams` it is
also the on-chip token loop (WRITE_MEM, LM_CONFIG, GENERATE; ``docs/protocol.md``), running the
program with :func:`tritium.sim.lmstep.execute`, the spec's own instruction semantics.
"""

import numpy as np

from ..hw import protocol as P
from . import golden, lmstep

__all__ = ["DeviceModel"]


class DeviceModel:
    """A byte-level model of the device with engine parameters ``params``.

    ``feed(data) -> bytes`` processes request bytes and returns every reply they caused;
    ``idle_timeout() -> bytes`` is what the device does when no byte arrives for the idle
    timeout: a TIMEOUT error while a frame is part-way (including while skipping the payload of a
    frame refused for its length), nothing between frames.

    TRIT2 code 3 (never written by the host) reads as weight 0, as in the gateware.

    Parameters
    ----------
    params : EngineParams
        The engine.
    clock_hz : int
        Reported by IDENTIFY.
    lm : LMParams or None
        The on-chip LM step's memory sizes: the device then answers WRITE_MEM, LM_CONFIG and
        GENERATE (``None``: those are UNKNOWN_OP, as on a device without it). Its memories
        (:attr:`program` instruction words, :attr:`cmem`, :attr:`embed`, :attr:`scale`, and the
        vector memory :attr:`vmem`) start at zero and keep their contents across RESET and
        between GENERATEs; so do the scalar registers (:attr:`regs`).
    """

    def __init__(self, params, *, clock_hz=12_000_000, lm=None):
        P.check_link_params(params)
        self.p = params
        self.clock_hz = clock_hz
        self.word_bytes = -(-params.word_bits // 8)
        self.acc_bytes = P.acc_bytes(params)
        self.max_payload = P.max_payload(params)
        self.memory = [0] * params.weight_depth
        self.slots = [None] * P.SLOTS
        self._weights = {}   # (base, rows, chunks) -> decoded matrix; emptied by every WRITE_WEIGHTS
        self.lm = lm
        if lm is not None:
            from ..hw.vector import decode, instruction_layout   # the gateware's own encoding
            from amaranth.hdl import Shape
            self.layout = instruction_layout(addr_bits=lm.addr_bits, caddr_bits=lm.caddr_bits)
            self._decode = decode
            self._ops = {}   # program address -> its decoded Op (or None); a write forgets it
            self.instruction_mask = (1 << Shape.cast(self.layout).width) - 1
            self.program = [0] * lm.prog_depth
            self.cmem = np.zeros(lm.cmem_depth, np.int8)
            self.embed = np.zeros(lm.embed_depth, np.int8)
            self.scale = np.zeros(lm.max_vocab, np.int16)
            self.vmem = np.zeros(lm.vmem_depth, np.int64)
            self.regs = {"M": np.zeros(1, np.int64), "SS": np.zeros(1, np.int64),
                         "G": (np.zeros(1, np.int64), np.zeros(1, np.int64)), "XQ": np.zeros(0, np.int8)}
        #: ``(step_start, prog_end, logits, vocab)`` from LM_CONFIG; ``None`` until then and after RESET
        self.lm_config = None
        self._pending = None
        self.expected = 0
        self.frames_ok = self.errors = self.last_error = 0
        self._state = "hunt"
        self._hdr = bytearray()
        self._payload = bytearray()
        self._crc = bytearray()
        self._skip = 0

    # -- byte parser (the same states as the gateware's) ------------------------------------
    def feed(self, data):
        out = bytearray()
        for b in bytes(data):
            out += self._byte(b)
        return bytes(out)

    def idle_timeout(self):
        if self._state == "hunt":
            return b""
        seq = self._hdr[0] if len(self._hdr) > 0 else 0
        op = self._hdr[1] if len(self._hdr) > 1 else 0
        self._state = "hunt"
        return self._error(seq, op, P.Err.TIMEOUT)

    def _byte(self, b):
        if self._state == "skip":
            # the payload and CRC of a frame refused for its length: never parsed as frames
            self._skip -= 1
            if not self._skip:
                self._state = "hunt"
            return b""
        if self._state == "hunt":
            if b == P.SYNC:
                self._state, self._hdr, self._payload, self._crc = "header", bytearray(), bytearray(), bytearray()
            return b""
        if self._state == "header":
            self._hdr.append(b)
            if len(self._hdr) < 4:
                return b""
            length = self._hdr[2] | self._hdr[3] << 8
            if length > self.max_payload:
                self._state, self._skip = "skip", length + 2
                return self._error(self._hdr[0], self._hdr[1], P.Err.BAD_LENGTH)
            self._state = "payload" if length else "crc"
            return b""
        if self._state == "payload":
            self._payload.append(b)
            if len(self._payload) == (self._hdr[2] | self._hdr[3] << 8):
                self._state = "crc"
            return b""
        self._crc.append(b)
        if len(self._crc) < 2:
            return b""
        self._state = "hunt"
        seq, op = self._hdr[0], self._hdr[1]
        if P.crc16(bytes(self._hdr) + bytes(self._payload)) != (self._crc[0] | self._crc[1] << 8):
            return self._error(seq, op, P.Err.BAD_CRC)
        return self._execute(seq, op, bytes(self._payload))

    # -- replies ------------------------------------------------------------------------------
    def _reply(self, seq, op, payload=b""):
        self.frames_ok = (self.frames_ok + 1) & 0xFFFF
        return P.encode_frame(seq, op | P.REPLY, payload)

    def _error(self, seq, op, code):
        self.errors = (self.errors + 1) & 0xFFFF
        self.last_error = int(code)
        return P.encode_frame(seq, P.ERROR, P.ERROR_LAYOUT.pack(int(code), op, self.expected))

    # -- commands -----------------------------------------------------------------------------
    def _execute(self, seq, op, payload):
        p = self.p
        if op in (P.Op.IDENTIFY, P.Op.RESET):
            self.expected = (seq + 1) & 0xFF
        elif seq != self.expected:
            return self._error(seq, op, P.Err.BAD_SEQ)
        else:
            self.expected = (seq + 1) & 0xFF
        n = len(payload)
        if op == P.Op.IDENTIFY:
            if n:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            return self._reply(seq, op, P.identify_payload(p, self.clock_hz, self.lm))
        if op == P.Op.RESET:
            if n:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            self.slots = [None] * P.SLOTS
            self.lm_config = None
            self.frames_ok = self.errors = self.last_error = 0
            return P.encode_frame(seq, op | P.REPLY)
        if op == P.Op.STATUS:
            if n:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            status = P.STATUS_LAYOUT.pack(self.frames_ok, self.errors, self.last_error)
            return self._reply(seq, op, status)
        if op == P.Op.WRITE_WEIGHTS:
            if n < 2 + self.word_bytes or (n - 2) % self.word_bytes:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            addr = payload[0] | payload[1] << 8
            count = (n - 2) // self.word_bytes
            if addr + count > p.weight_depth:
                return self._error(seq, op, P.Err.OUT_OF_RANGE)
            mask = (1 << p.word_bits) - 1
            self._weights.clear()
            for i in range(count):
                chunk = payload[2 + i * self.word_bytes: 2 + (i + 1) * self.word_bytes]
                self.memory[addr + i] = int.from_bytes(chunk, "little") & mask
            return self._reply(seq, op)
        if op == P.Op.SET_SLOT:
            if n != P.SET_SLOT_LAYOUT.size:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            slot, base, rows, chunks = P.SET_SLOT_LAYOUT.unpack(payload)
            if slot >= P.SLOTS:
                return self._error(seq, op, P.Err.BAD_SLOT)
            words = -(-rows // p.lanes) * chunks
            if not rows or not chunks or rows > P.max_link_rows(p) or chunks > p.max_chunks \
                    or base + words > p.weight_depth:
                return self._error(seq, op, P.Err.OUT_OF_RANGE)
            self.slots[slot] = (base, rows, chunks)
            return self._reply(seq, op)
        if op == P.Op.MATVEC:
            if n < 1:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            slot = payload[0]
            if slot >= P.SLOTS:
                return self._error(seq, op, P.Err.BAD_SLOT)
            if self.slots[slot] is None:
                return self._error(seq, op, P.Err.EMPTY_SLOT)
            _, rows, chunks = self.slots[slot]
            if n != 1 + chunks * p.trits:
                return self._error(seq, op, P.Err.BAD_LENGTH)
            y = golden.matvec(self._slot_weights(slot), np.frombuffer(payload[1:], np.int8))
            mask = (1 << (8 * self.acc_bytes)) - 1
            body = b"".join((int(v) & mask).to_bytes(self.acc_bytes, "little") for v in y)
            return self._reply(seq, op, body)
        if self.lm is not None:
            if op == P.Op.WRITE_MEM:
                return self._write_mem(seq, op, payload)
            if op == P.Op.LM_CONFIG:
                return self._lm_config(seq, op, payload)
            if op == P.Op.GENERATE:
                return self._generate(seq, op, payload)
        return self._error(seq, op, P.Err.UNKNOWN_OP)

    def _slot_weights(self, slot):
        """The ternary matrix ``slot`` names, ``rows x chunks * trits``, read from weight memory
        as the engine reads it (code 3 as 0)."""
        p = self.p
        key = self.slots[slot]
        if key not in self._weights:
            base, rows, chunks = key
            words = self.memory[base: base + -(-rows // p.lanes) * chunks]
            self._weights[key] = golden.weights_from_words(words, rows, chunks * p.trits, lanes=p.lanes,
                                                           trits=p.trits, packing=p.packing, lenient=True)
        return self._weights[key]

    # -- the on-chip LM step ------------------------------------------------------------------
    def _write_mem(self, seq, op, payload):
        # checks: the header's length, the space, whole elements (at least one), the range
        lm, n = self.lm, len(payload)
        if n < P.WRITE_MEM_HEADER.size:
            return self._error(seq, op, P.Err.BAD_LENGTH)
        space, addr = P.WRITE_MEM_HEADER.unpack(payload[:P.WRITE_MEM_HEADER.size])
        if space > max(P.Space):
            return self._error(seq, op, P.Err.OUT_OF_RANGE)
        size = P.space_element_bytes(lm, space)
        body = payload[P.WRITE_MEM_HEADER.size:]
        if not body or len(body) % size:
            return self._error(seq, op, P.Err.BAD_LENGTH)
        count = len(body) // size
        if addr + count > P.space_depth(lm, space):
            return self._error(seq, op, P.Err.OUT_OF_RANGE)
        if space == P.Space.PROGRAM:
            for i in range(count):
                self.program[addr + i] = int.from_bytes(body[i * size:(i + 1) * size], "little") & self.instruction_mask
                self._ops.pop(addr + i, None)
        else:
            dtype = {P.Space.CONST: np.int8, P.Space.EMBED: np.int8, P.Space.SCALE: np.dtype("<i2")}[space]
            memory = {P.Space.CONST: self.cmem, P.Space.EMBED: self.embed, P.Space.SCALE: self.scale}[space]
            memory[addr:addr + count] = np.frombuffer(body, dtype)
        return self._reply(seq, op)

    def _lm_config(self, seq, op, payload):
        lm = self.lm
        if len(payload) != P.LM_CONFIG_LAYOUT.size:
            return self._error(seq, op, P.Err.BAD_LENGTH)
        step_start, prog_end, logits, vocab = P.LM_CONFIG_LAYOUT.unpack(payload)
        if not (step_start < prog_end <= lm.prog_depth and 1 <= vocab <= lm.max_vocab
                and logits + vocab <= lm.vmem_depth):
            return self._error(seq, op, P.Err.OUT_OF_RANGE)
        self.lm_config = (step_start, prog_end, logits, vocab)
        return self._reply(seq, op)

    def _generate(self, seq, op, payload):
        head = P.GENERATE_LAYOUT.size
        if len(payload) < head + 1:
            return self._error(seq, op, P.Err.BAD_LENGTH)
        if self.lm_config is None:
            return self._error(seq, op, P.Err.NOT_LOADED)
        max_tokens, seed, inv_temperature, top_k, stop = P.GENERATE_LAYOUT.unpack(payload[:head])
        prompt = payload[head:]
        step_start, prog_end, logits, vocab = self.lm_config
        if max_tokens == 0 or max(prompt) >= vocab:
            return self._error(seq, op, P.Err.OUT_OF_RANGE)
        rule, state = lmstep.SamplingParams(inv_temperature, top_k), lmstep.rng_seed(seed)
        out = bytearray()
        self._pending = None   # the slot of a quant whose matvec has not come yet
        try:
            # the reset program sees token 0 (an `embed` there reads row 0)
            self._run(0, step_start, 0)
            for token in prompt:
                self._run(step_start, prog_end, token)
            count = 0
            while True:
                token, state = lmstep.choose_token(self.vmem[logits:logits + vocab], rule, state)
                out += P.encode_frame(seq, op | P.REPLY, bytes([token]))   # streamed, not counted
                count += 1
                if token == stop:
                    reason = P.Stop.STOP_TOKEN
                    break
                if count == max_tokens:
                    reason = P.Stop.MAX_TOKENS
                    break
                self._run(step_start, prog_end, token)
        except _Refused as e:
            return bytes(out) + self._error(seq, op, e.code)
        return bytes(out) + self._reply(seq, op, P.GENERATE_END_LAYOUT.pack(count, reason))

    def _run(self, start, end, token):
        """Run instructions ``start .. end-1`` with ``token`` for ``embed``; raises :class:`_Refused`
        at the first instruction that fails its run-time checks (:meth:`check_instruction`), before
        it runs, or at the end when a ``quant`` is still waiting for its ``matvec``."""
        for pc in range(start, end):
            if pc not in self._ops:
                self._ops[pc] = self._decode(self.program[pc], self.layout)
            op = self._ops[pc]
            code = self.check_instruction(op, token)
            if code is not None:
                raise _Refused(code)
            lmstep.execute(op, self.vmem, self.regs, self.cmem, embed_row=lambda: self._embed_row(token, op.n),
                           matvec=self._matvec)
            if op.code in ("quant", "matvec"):
                self._pending = op.c if op.code == "quant" else None
        if self._pending is not None:
            raise _Refused(P.Err.OUT_OF_RANGE)

    def check_instruction(self, op, token):
        """The run-time checks of one decoded instruction ``op`` (``None``: an undefined opcode)
        about to run with ``token``: the :class:`~tritium.hw.protocol.Err` that ends GENERATE, or
        ``None`` when it may run. In order: UNKNOWN_OP; OUT_OF_RANGE for a vector operand past
        the vector memory, constants past the constant memory, an embedding row past the
        embedding memory, a bad reduction, a part-way overlap of an elementwise destination and
        source, or a broken ``quant`` / ``matvec`` pair (after a ``quant`` only elementwise
        instructions may come before the ``matvec`` of the same slot, and a ``matvec`` must close
        such a ``quant``); then for ``quant`` /
        ``matvec`` BAD_SLOT, EMPTY_SLOT and OUT_OF_RANGE for a count that does not fit the slot's
        matrix (``docs/protocol.md``, GENERATE)."""
        if op is None:
            return P.Err.UNKNOWN_OP
        lm, code, n = self.lm, op.code, op.n
        elementwise = code in lmstep.ELEMENTWISE
        sources = ("a",) if code in lmstep.READS_A else ()
        sources += ("b",) if code in lmstep.READS_B else ()
        bad = (code not in ("quant", "gain") and op.dst + n > lm.vmem_depth) \
            or any(getattr(op, src) + n > lm.vmem_depth for src in sources) \
            or (code in lmstep.READS_C and op.c + n > lm.cmem_depth) \
            or (code == "embed" and (token + 1) * n > lm.embed_depth) \
            or op.red == 3 \
            or (op.red != 0 and (not elementwise or n == 0)) \
            or (op.red == lmstep.RED_SUMSQ and n > golden.MAX_VECTOR) \
            or (elementwise and n > 0 and any(getattr(op, src) < op.dst < getattr(op, src) + n for src in sources)) \
            or (code == "matvec" and self._pending != op.c) \
            or (self._pending is not None and code != "matvec" and not elementwise)
        if bad:
            return P.Err.OUT_OF_RANGE
        if code in ("quant", "matvec"):
            if op.c >= P.SLOTS:
                return P.Err.BAD_SLOT
            if self.slots[op.c] is None:
                return P.Err.EMPTY_SLOT
            _, rows, chunks = self.slots[op.c]
            if (code == "quant" and n > chunks * self.p.trits) or (code == "matvec" and n != rows):
                return P.Err.OUT_OF_RANGE
        return None

    def _embed_row(self, token, n):
        # the `embed` instruction's values: e8[token * n + i] * scale[token], exact
        return self.embed[token * n: (token + 1) * n].astype(np.int64) * int(self.scale[token])

    def _matvec(self, slot, xq):
        # the engine's product: the slot's matrix times its quant's activations, zero-padded to
        # the slot's chunks * trits (the quant named this slot and its n fits: checked)
        w = self._slot_weights(slot)
        x = np.zeros(w.shape[1], np.int8)
        x[:len(xq)] = xq
        return golden.matvec(w, x)


class _Refused(Exception):
    # an instruction failed its run-time check: GENERATE ends with this error code
    def __init__(self, code):
        super().__init__(code)
        self.code = code
