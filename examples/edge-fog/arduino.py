"""A simulated Arduino with a DHT11 on a pseudo-terminal, speaking like the original's sketch.

The original DAGonStar edge-fog evaluation read an Arduino over USB serial at 9600 baud; its
sketch prints a banner, then once a second
``Humidity: 45.00 %  |  Temperature: 22.00 °C  71.60 °F  |  Heat Index: 21.80 °C``
(or ``Error reading from DHT11 sensor`` when a read fails). This plays that device on a pty:
the slave side is a serial port any program (pyserial, ``cat``) can open, set to 9600 baud,
and bytes leave no faster than 9600 baud allows (10 bits per byte, 8N1).

    with SimulatedArduino(period=1.0) as arduino:
        print(arduino.port)   # e.g. /dev/pts/3 — or arduino.link, a stable symlink if asked for

Closing it (or ``unplug()``) hangs up the line, as pulling the USB cable does.
"""

from __future__ import annotations

import os
import random
import termios
import threading
import tty
from pathlib import Path
from types import TracebackType

__all__ = ["SimulatedArduino", "dht_line"]

BAUD = 9600
BYTES_PER_SECOND = BAUD / 10  # 8N1: start + 8 data + stop bits


def heat_index_c(temp_c: float, humidity: float) -> float:
    """The DHT library's heat index (Steadman's simple form, Rothfusz above 80 °F)."""
    f = temp_c * 9 / 5 + 32
    hi = 0.5 * (f + 61.0 + (f - 68.0) * 1.2 + humidity * 0.094)
    if hi > 79:
        hi = (-42.379 + 2.04901523 * f + 10.14333127 * humidity - 0.22475541 * f * humidity
              - 0.00683783 * f * f - 0.05481717 * humidity * humidity + 0.00122874 * f * f * humidity
              + 0.00085282 * f * humidity * humidity - 0.00000199 * f * f * humidity * humidity)  # fmt: skip
    return (hi - 32) * 5 / 9


def dht_line(temp_c: float, humidity: float) -> str:
    """One line as the sketch prints it (Serial.print of a float: two decimals)."""
    f = temp_c * 9 / 5 + 32
    return (
        f"Humidity: {humidity:.2f} %  |  Temperature: {temp_c:.2f} °C  {f:.2f} °F  |  "
        f"Heat Index: {heat_index_c(temp_c, humidity):.2f} °C"
    )


class SimulatedArduino:
    """The sketch on a pty, in a background thread (blocking writes never touch an event loop).

    Args:
        period: seconds between readings (the sketch: ``delay(1000)``).
        error_every: every n-th reading is ``Error reading from DHT11 sensor`` (0: never).
        link: also make this path a symlink to the pty (a stable name like ``/dev/ttyACM0``).
        seed: random seed of the readings.
    """

    def __init__(self, *, period: float = 1.0, error_every: int = 0, link: Path | None = None, seed: int = 11) -> None:
        self.period = period
        self.error_every = error_every
        self.link = link
        self.lines = 0
        self._random = random.Random(seed)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[4] = attrs[5] = termios.B9600  # ispeed, ospeed: what the sketch's Serial.begin(9600) sets
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)  # nobody reading: lines are lost, as on a real USB port
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="simulated-arduino", daemon=True)

    def __enter__(self) -> SimulatedArduino:
        if self.link is not None:
            self.link.unlink(missing_ok=True)
            self.link.symlink_to(self.port)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.unplug()

    def unplug(self) -> None:
        """Stop and hang up: readers of the port see it close."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1
        if self.link is not None:
            self.link.unlink(missing_ok=True)

    def _send(self, text: str) -> None:
        data = (text + "\r\n").encode()  # Serial.println ends lines with CR LF
        try:
            os.write(self._master, data)
        except BlockingIOError:
            pass  # the port's buffer is full: nobody reads, the line is lost
        self._stop.wait(len(data) / BYTES_PER_SECOND)  # the wire's pace at 9600 baud

    def _play(self) -> None:
        temp, hum = 22.0, 45.0
        try:
            self._send("Starting DHT11 sensor reading...")
            n = 0
            while not self._stop.wait(self.period):
                n += 1
                if self.error_every and n % self.error_every == 0:
                    self._send("Error reading from DHT11 sensor")
                    continue
                temp = min(35.0, max(10.0, temp + self._random.uniform(-0.3, 0.3)))
                hum = min(90.0, max(20.0, hum + self._random.uniform(-1.0, 1.0)))
                # A DHT11 resolves 1 °C and 1 %: the sketch prints whole numbers with two decimals.
                self._send(dht_line(float(round(temp)), float(round(hum))))
                self.lines += 1
        except OSError:
            return  # unplugged while writing
