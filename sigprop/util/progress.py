"""A dependency-free progress bar for long CLI work (points done, rate, time left)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "normalizers") as bar: ... bar.advance(label)``.

    Writes to stderr; redraws in place on a terminal and prints one line per step otherwise.
    """

    def __init__(self, total: int, unit: str = "points", stream=None, width: int = 24):
        self.total, self.unit, self.width = total, unit, width
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __enter__(self):
        self._draw("")
        return self

    def __exit__(self, *exc):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def advance(self, label: str = "", n: int = 1) -> None:
        self.done += n
        self._draw(label)

    def line(self, label: str) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        left = (self.total - self.done) / rate if rate else float("nan")
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        eta = f"{left:5.0f}s left" if left == left else "  ?  left"
        return (f"[{bar}] {self.done}/{self.total} {self.unit} | {rate:5.2f}/s | "
                f"{elapsed:5.0f}s elapsed, {eta} {label}")

    def _draw(self, label: str) -> None:
        text = self.line(label)
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
        elif self.done:
            self.stream.write(text + "\n")
        self.stream.flush()
