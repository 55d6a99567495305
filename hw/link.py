"""The framing layer of the link: request bytes to frames, reply frames to bytes.

:class:`FrameReceiver` finds each request frame in the byte stream (SYNC, header, payload, CRC),
keeps its payload in a buffer and reports it, or the reason it was refused, as one event;
:class:`FrameTransmitter` frames each reply. Both know the frame format of ``docs/protocol.md``
(:data:`tritium.hw.protocol.FRAME_HEADER`, the CRC :data:`tritium.hw.protocol.CRC_ALGORITHM`
from Amaranth's catalogue, the idle timeout) and nothing of the commands, which are the
:class:`tritium.hw.sequencer.CommandSequencer`'s.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as P
from .params import rejected

__all__ = ["frame_layout", "ReplySignature", "FrameReceiver", "FrameTransmitter"]


def frame_layout(head_bytes):
    """What :class:`FrameReceiver` reports for each frame.

    ``header``
        :data:`protocol.FRAME_HEADER`: seq, op and payload length (for a frame stopped part-way,
        the fields received so far, 0 for the rest).
    ``error``
        0 for a good frame, else the :class:`protocol.Err` that refused it: BAD_CRC, BAD_LENGTH
        (a length over the maximum, refused from the header) or TIMEOUT.
    ``head``
        The payload's first ``head_bytes`` bytes, byte ``i`` at bits ``8i .. 8i + 7`` (bytes past
        the payload's end are stale): the fixed-position fields a command decodes at once.
    ``whole_words``
        The payload past its first 2 bytes (WRITE_WEIGHTS' address) is a whole number of words.
    """
    return data.StructLayout({"header": P.FRAME_HEADER.shape, "error": range(max(P.Err) + 1),
                              "head": 8 * head_bytes, "whole_words": 1})


class ReplySignature(wiring.Signature):
    """Reply frames, from the sender's side (:class:`FrameTransmitter` has the flipped one).

    Members
    -------
    header : Out(stream of :data:`protocol.FRAME_HEADER`)
        One transfer per frame: its seq, op and payload length. Taken only while ``idle``.
    payload : Out(stream of bytes)
        Then the frame's ``length`` payload bytes.
    idle : In(1)
        No frame is being sent and none is offered: every reply byte has left.
    """

    def __init__(self):
        super().__init__({"header": Out(stream.Signature(P.FRAME_HEADER.shape)),
                          "payload": Out(stream.Signature(8)), "idle": In(1)})


def _check_positive(obj, name, value, least=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise rejected(obj, ValueError(f"{name} = {value!r} must be an integer >= {least}"))


class FrameReceiver(wiring.Component):
    """Finds request frames in a byte stream and reports each once it is complete or refused.

    Parameters
    ----------
    max_payload : int
        The longest payload accepted, and the buffer's depth. A longer length is refused as soon
        as the header is in (BAD_LENGTH); the declared payload and CRC are then skipped unread
        (no frame inside them is ever parsed), or until the idle timeout (TIMEOUT).
    head_bytes : int
        Leading payload bytes reported in the event (``head`` of :func:`frame_layout`).
    word_bytes : int
        The word size ``whole_words`` is about.
    timeout_cycles : int
        A frame with no byte for this many cycles part-way (or a skip, above) ends with TIMEOUT.

    Members
    -------
    rx : In(stream of bytes)
        Taken one per cycle while hunting for SYNC or part-way through a frame; never while an
        event waits. Bytes before a SYNC are dropped.
    frame : Out(stream of :func:`frame_layout`)
        One event per frame, good or refused, valid from the cycle after its last byte (or after
        the timeout's last cycle). The consumer takes it once it has dealt with the frame: until
        then the event and the buffer hold still and no byte is taken (one request at a time).
    buffer : Out(:class:`amaranth.lib.memory.ReadPort.Signature` of bytes)
        The last good frame's payload, byte ``i`` at address ``i``: a synchronous read port
        (``data`` the cycle after ``addr``, held while ``en`` is low).
    idle : Out(1)
        Hunting for SYNC between frames.
    in_frame : Out(1)
        Part-way through a frame, or skipping the payload of a frame refused for its length.

    Timing
    ------
    One byte per cycle; the event of a frame comes the cycle after its last CRC byte, that of an
    oversize length the cycle after the header's last byte. Taking an event returns the receiver
    to hunting (or to the skip) on the next cycle.
    """

    def __init__(self, *, max_payload, head_bytes, word_bytes, timeout_cycles):
        _check_positive(self, "max_payload", max_payload)
        _check_positive(self, "head_bytes", head_bytes)
        _check_positive(self, "word_bytes", word_bytes)
        _check_positive(self, "timeout_cycles", timeout_cycles, least=2)
        if max_payload > 0xFFFF:
            raise rejected(self, ValueError(f"max_payload = {max_payload} does not fit the 16-bit length field"))
        self._max_payload, self._head_bytes = max_payload, head_bytes
        self._word_bytes, self._timeout = word_bytes, timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(8)),
            "frame": Out(stream.Signature(frame_layout(head_bytes))),
            "buffer": Out(memory.ReadPort.Signature(addr_width=(max_payload - 1).bit_length(), shape=8)),
            "idle": Out(1),
            "in_frame": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = memory.Memory(shape=8, depth=self._max_payload, init=[])
        buffer_wr = buffer.write_port()
        wiring.connect(m, wiring.flipped(self.buffer), buffer.read_port(transparent_for=()))
        m.submodules.crc = crc = P.crc_parameters().create()

        byte = self.rx.payload
        took = Signal()
        m.d.comb += [took.eq(self.rx.valid & self.rx.ready), crc.data.eq(byte)]

        header = Signal(P.FRAME_HEADER.shape)
        error = Signal.like(self.frame.payload.error)
        head = Signal.like(self.frame.payload.head)
        index = Signal(16)            # of the byte in the header, then in the payload
        word_pos = Signal(range(max(self._word_bytes, 2)))   # payload position past 2, mod word_bytes
        crc_lo = Signal(8)
        timer = Signal(range(self._timeout + 1))
        skip = Signal()               # the event refuses an oversize length: skip its frame next
        skip_left = Signal(17)        # bytes of that frame (payload and CRC) still to discard
        event = self.frame.payload
        m.d.comb += [event.header.eq(header), event.error.eq(error), event.head.eq(head),
                     event.whole_words.eq(word_pos == 0)]

        def report(code):
            # the frame is complete (code 0) or refused: hand the event over
            m.d.sync += error.eq(code)
            m.next = "EVENT"

        def receiving():
            # part-way through a frame: a frame that stops arriving is dropped
            m.d.comb += [self.rx.ready.eq(1), self.in_frame.eq(1)]
            with m.If(took):
                m.d.sync += timer.eq(0)
            with m.Elif(timer == self._timeout - 1):
                report(P.Err.TIMEOUT)
            with m.Else():
                m.d.sync += timer.eq(timer + 1)

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += [self.rx.ready.eq(1), self.idle.eq(1)]
                with m.If(took & (byte == P.SYNC)):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += [header.eq(0), index.eq(0), timer.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                receiving()
                m.d.comb += crc.valid.eq(took)
                with m.If(took):
                    m.d.sync += [header.as_value().word_select(index[:2], 8).eq(byte), index.eq(index + 1)]
                    with m.If(index == P.FRAME_HEADER.size - 1):
                        length = Cat(header.length[:8], byte)
                        m.d.sync += [index.eq(0), word_pos.eq(0)]
                        with m.If(length > self._max_payload):
                            m.d.sync += [skip.eq(1), skip_left.eq(length + P.FRAME_CRC.size)]
                            report(P.Err.BAD_LENGTH)
                        with m.Elif(length == 0):
                            m.next = "CRC_LO"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                receiving()
                m.d.comb += [crc.valid.eq(took), buffer_wr.addr.eq(index), buffer_wr.data.eq(byte),
                             buffer_wr.en.eq(took)]
                with m.If(took):
                    m.d.sync += [index.eq(index + 1), head.word_select(index, 8).eq(byte)]
                    with m.If(index >= P.WRITE_WEIGHTS_HEADER.size):
                        m.d.sync += word_pos.eq(Mux(word_pos == self._word_bytes - 1, 0, word_pos + 1))
                    with m.If(index == header.length - 1):
                        m.next = "CRC_LO"
            with m.State("CRC_LO"):
                receiving()
                with m.If(took):
                    m.d.sync += crc_lo.eq(byte)
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                receiving()
                with m.If(took):
                    report(Mux(Cat(crc_lo, byte) == crc.crc, 0, P.Err.BAD_CRC))
            with m.State("EVENT"):
                m.d.comb += self.frame.valid.eq(1)
                with m.If(self.frame.ready):
                    m.d.sync += [skip.eq(0), timer.eq(0)]
                    with m.If(skip):
                        m.next = "SKIP"
                    with m.Else():
                        m.next = "HUNT"
            with m.State("SKIP"):
                # the payload and CRC of a frame refused for its length: never parsed as frames
                receiving()
                with m.If(took):
                    m.d.sync += skip_left.eq(skip_left - 1)
                    with m.If(skip_left == 1):
                        m.next = "HUNT"
        return m


class FrameTransmitter(wiring.Component):
    """Sends one frame per header it takes: SYNC, the header, the payload bytes, the CRC.

    Members
    -------
    reply : In(:class:`ReplySignature`)
        ``header`` is taken when no frame is in progress; ``payload`` bytes pass straight
        through to ``tx`` (``ready`` is ``tx.ready``) once the header has been sent.
    tx : Out(stream of bytes)

    Timing
    ------
    The cycle after a header is taken, SYNC is offered; then one byte per cycle while ``tx`` is
    ready (and, for the payload, ``reply.payload`` valid). ``reply.idle`` rises the cycle after
    the last CRC byte is taken.
    """

    def __init__(self):
        super().__init__({"reply": In(ReplySignature()), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = P.crc_parameters().create()
        header = Signal(P.FRAME_HEADER.shape)
        index = Signal(2)             # of the byte in the header, then in the CRC
        left = Signal(16)             # payload bytes still to send
        sent = Signal()
        m.d.comb += [sent.eq(self.tx.valid & self.tx.ready), crc.data.eq(self.tx.payload)]

        with m.FSM():
            with m.State("IDLE"):
                offered = self.reply.header
                m.d.comb += [offered.ready.eq(1), self.reply.idle.eq(~offered.valid)]
                with m.If(offered.valid):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += [header.eq(offered.payload), left.eq(offered.payload.length), index.eq(0)]
                    m.next = "SYNC"
            with m.State("SYNC"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(P.SYNC)]
                with m.If(sent):
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(header.as_value().word_select(index, 8)),
                             crc.valid.eq(sent)]
                with m.If(sent):
                    m.d.sync += index.eq(index + 1)   # wraps to 0 for the CRC
                    with m.If(index == P.FRAME_HEADER.size - 1):
                        with m.If(header.length == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [self.tx.valid.eq(self.reply.payload.valid), self.tx.payload.eq(self.reply.payload.payload),
                             self.reply.payload.ready.eq(self.tx.ready), crc.valid.eq(sent)]
                with m.If(sent):
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(crc.crc.word_select(index[0], 8))]
                with m.If(sent):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == P.FRAME_CRC.size - 1):
                        m.next = "IDLE"
        return m
