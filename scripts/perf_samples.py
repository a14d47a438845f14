"""Reads the samples of `perf script` output with call chains, for the scripts that fold
them (profile-fold.py, alloc-calls.py, offcpu-reasons.py).

A sample is its header, an unindented line with the fields asked for (empty with
`-F ip,sym`), then one indented line per frame, "IP SYMBOL[+0xOFFSET] [(DSO)]", from the
sampled function outwards; a blank line ends it.
"""
import re

_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def frame(text):
    """(symbol without its offset, DSO or "") of a frame line."""
    parts = text.strip().split(None, 1)
    symbol = parts[1] if len(parts) > 1 else parts[0]
    dso = ""
    if symbol.endswith(")") and " (" in symbol:
        symbol, dso = symbol.rsplit(" (", 1)
        dso = dso[:-1]
    return _OFFSET.sub("", symbol), dso


def samples(lines):
    """(header, [(symbol, dso), …]) per sample."""
    header, frames = "", []
    for line in lines:
        if line[:1].isspace() and line.strip():
            frames.append(frame(line))
            continue
        if header or frames:
            yield header, frames
        header, frames = line.strip(), []
    if header or frames:
        yield header, frames
