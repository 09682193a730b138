# Modbus-RTU master over a UART (Modbus over Serial Line V1.02), shared by
# the PZEM-004T and Eastron SDM drivers.
#
# A frame is address, function, data and a CRC-16 (polynomial 0xA001
# reflected, initial 0xFFFF, low byte first). One request at a time: the
# receive buffer is flushed, the request is sent (an RS-485 transceiver's
# driver-enable pin is raised only while sending), and the reply is read
# until its expected length or an exception reply arrives, or the timeout
# passes. Every malformed reply raises ModbusError naming what was wrong;
# nothing here can crash the caller's loop with anything else.

import struct

from edge import hal

READ_HOLDING = 0x03
READ_INPUT = 0x04
WRITE_SINGLE = 0x06

EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
              5: "acknowledge", 6: "server device busy"}


class ModbusError(OSError):
    pass


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def frame(body):
    """Append the CRC (low byte first) to address + PDU."""
    c = crc16(body)
    return bytes(body) + bytes([c & 255, c >> 8])


def check_frame(data):
    """Raise ModbusError unless the last two bytes are the CRC of the rest."""
    if len(data) < 4:
        raise ModbusError("frame of %d bytes is too short (at least 4)" % len(data))
    c = crc16(data[:-2])
    got = data[-2] | (data[-1] << 8)
    if c != got:
        raise ModbusError("CRC %04x does not match %04x computed over %d bytes" % (got, c, len(data) - 2))


def read_request(address, function, start, count):
    return frame(bytes([address, function, start >> 8, start & 255, count >> 8, count & 255]))


def parse_registers(reply, address, function, count):
    """Registers (list of u16) from a read reply; ModbusError if corrupt,
    from another device or function, an exception reply or the wrong size."""
    check_frame(reply)
    if reply[0] != address:
        raise ModbusError("reply from address %d, expected %d" % (reply[0], address))
    if reply[1] == function | 0x80:
        code = reply[2]
        raise ModbusError("device %d answered exception %d (%s) to function %d" % (
            address, code, EXCEPTIONS.get(code, "unknown"), function))
    if reply[1] != function:
        raise ModbusError("reply to function %d, expected %d" % (reply[1], function))
    n = reply[2]
    if n != 2 * count or len(reply) != 5 + n:
        raise ModbusError("reply carries %d data bytes in a %d-byte frame, expected %d registers" % (n, len(reply), count))
    return [(reply[3 + 2 * i] << 8) | reply[4 + 2 * i] for i in range(count)]


def u32_lo_hi(regs, i):
    """32-bit value stored low word first (PZEM)."""
    return regs[i] | (regs[i + 1] << 16)


def float32(regs, i):
    """IEEE-754 single from two registers, high word first (Eastron)."""
    return struct.unpack(">f", bytes([regs[i] >> 8, regs[i] & 255, regs[i + 1] >> 8, regs[i + 1] & 255]))[0]


def u32_hi_lo(regs, i):
    """32-bit value stored high word first (Eastron floats' raw bits)."""
    return (regs[i] << 16) | regs[i + 1]


def float32_scaled(regs, i, scale):
    """The float32 in two registers (high word first) times the integer
    `scale`, rounded half up to an integer, computed exactly from the
    bits: value = mantissa * 2^(exponent - 150). A float32 multiplication
    (an ESP32 has no doubles) would round again: 98765.3984375 kWh * 1000
    gives 98765400 Wh instead of 98765398. Raises ValueError for NaN or
    infinity and for negative values (the caller's counters are >= 0)."""
    bits = u32_hi_lo(regs, i)
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    if exp == 0xFF:
        raise ValueError("register holds %s, expected a non-negative number" % ("NaN" if mant else "infinity"))
    if bits >> 31 and (exp or mant):
        raise ValueError("register holds a negative number, expected a non-negative number")
    if exp == 0:
        exp = 1  # subnormal: no implicit leading 1
    else:
        mant |= 0x800000
    num = mant * scale
    shift = 150 - exp
    if shift <= 0:
        return num << -shift
    return (num + (1 << (shift - 1))) >> shift


class Master:
    def __init__(self, uart, baud=9600, de_pin=None, timeout_ms=200, retries=1):
        self.uart = uart
        self.baud = baud
        self.de = de_pin
        if self.de is not None:
            self.de.value(0)
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.errors = 0
        self.last_error = None

    def _send(self, request):
        while self.uart.any():
            self.uart.read()
        if self.de is not None:
            self.de.value(1)
        self.uart.write(request)
        hal.wait_tx_done(self.uart, len(request), self.baud)
        if self.de is not None:
            self.de.value(0)

    def _receive(self, expected):
        buf = b""
        start = hal.ticks_ms()
        while True:
            chunk = self.uart.read(expected - len(buf))
            if chunk:
                buf += chunk
                if len(buf) >= 2 and buf[1] & 0x80:
                    expected = 5  # exception reply: addr, fc|0x80, code, crc
                elif len(buf) >= 3 and buf[1] in (READ_HOLDING, READ_INPUT) and 5 + buf[2] < expected:
                    # A shorter reply than asked for: its byte count says
                    # where it ends; parse_registers reports the mismatch.
                    expected = 5 + buf[2]
                if len(buf) >= expected:
                    return buf[:expected]
            elif hal.ticks_diff(hal.ticks_ms(), start) >= self.timeout_ms:
                if buf:
                    raise ModbusError("reply cut short: %d of %d bytes within %d ms" % (len(buf), expected, self.timeout_ms))
                raise ModbusError("no reply within %d ms" % self.timeout_ms)
            else:
                hal.sleep_ms(2)

    def transact(self, request, expected, check=None):
        """Send `request`, return the reply; retries on any error."""
        err = None
        for _ in range(self.retries + 1):
            try:
                self._send(request)
                reply = self._receive(expected)
                if check is not None:
                    return check(reply)
                return reply
            except ModbusError as e:
                err = e
                self.errors += 1
                self.last_error = str(e)
        raise err

    def read_registers(self, address, function, start, count):
        return self.transact(
            read_request(address, function, start, count), 5 + 2 * count,
            lambda reply: parse_registers(reply, address, function, count))
