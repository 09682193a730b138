"""`microgrid console`: a line-oriented shell on the terminal or on a serial
port (the Pi's UART), relayed to the running coordinator's console."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from typing import Callable

from .config import ConfigError, load


def _pump(read: Callable[[], bytes], write: Callable[[bytes], None], done: threading.Event) -> None:
    try:
        while not done.is_set():
            data = read()
            if not data:
                break
            write(data)
    except OSError:
        pass
    finally:
        done.set()


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise ConnectionError(
            f"no coordinator console at {path}: is the coordinator running "
            "(systemctl status microgrid-coordinator) with this config?"
        ) from None
    return s


def _run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.db:
        config.store.path = args.db
    path = args.socket or str(config.console_socket())
    try:
        sock = _connect(path)
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    if args.serial:
        try:
            import serial  # pyserial
        except ImportError:
            print("error: --serial needs pyserial (pip install pyserial)", file=sys.stderr)
            return 2
        try:
            port = serial.Serial(args.serial, args.baud, timeout=0.2)
        except serial.SerialException as e:
            print(f"error: cannot open serial port {args.serial}: {e}", file=sys.stderr)
            return 1

        def serial_read() -> bytes:
            while not done.is_set():
                data = port.read(256)
                if data:
                    # Terminals send CR; the console wants lines.
                    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            return b""

        out = threading.Thread(target=_pump, args=(lambda: sock.recv(4096), port.write, done), daemon=True)
        out.start()
        _pump(serial_read, sock.sendall, done)
        port.close()
    else:
        def stdout_write(data: bytes) -> None:
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()

        # The session lasts until the coordinator closes it (after 'quit',
        # or once our input has ended and every answer has been shown).
        def send_stdin() -> None:
            _pump(lambda: sys.stdin.buffer.readline(), sock.sendall, done)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=send_stdin, daemon=True).start()
        _pump(lambda: sock.recv(4096), stdout_write, threading.Event())
    sock.close()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("console", help="technician console of the running coordinator (terminal or serial port)")
    p.add_argument("--config", help="the coordinator's TOML config (to find its console socket)")
    p.add_argument("--db", help="database path (the socket sits beside it unless [console] socket is set)")
    p.add_argument("--socket", help="console socket path (overrides the config)")
    p.add_argument("--serial", metavar="PORT", help="serve the console on a serial port, e.g. /dev/serial0")
    p.add_argument("--baud", type=int, default=115200, help="serial speed (default 115200)")
    p.set_defaults(func=_run)
