"""Mouth shapes for phonemes: eSpeak NG's phoneme mnemonics mapped to fifteen visemes.

The viseme set is the common one for lip-sync (silence, PP, FF, TH, DD, kk, CH, SS, nn, RR,
aa, E, ih, oh, ou): few enough for an avatar to draw, enough that speech looks like speech.
Stress (' ,) and length (:) marks are ignored; the longest known prefix of the mnemonic decides.
"""

from __future__ import annotations

SILENCE = "sil"
VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")

_BY_PHONEME = {
    "_": SILENCE,
    "p": "PP", "b": "PP", "m": "PP",
    "f": "FF", "v": "FF",
    "T": "TH", "D": "TH",
    "t": "DD", "d": "DD",
    "k": "kk", "g": "kk", "N": "kk", "h": "kk", "x": "kk",
    "tS": "CH", "dZ": "CH", "S": "CH", "Z": "CH", "j": "CH",
    "s": "SS", "z": "SS",
    "n": "nn", "l": "nn",
    "r": "RR", "3": "RR", "R": "RR",
    "a": "aa", "A": "aa", "@": "aa", "V": "aa", "aI": "aa", "aU": "aa",
    "e": "E", "E": "E", "eI": "E",
    "i": "ih", "I": "ih",
    "o": "oh", "O": "oh", "0": "oh", "oU": "oh", "OI": "oh",
    "u": "ou", "U": "ou", "w": "ou",
}  # fmt: skip
_LONGEST = max(len(key) for key in _BY_PHONEME)


def viseme(phoneme: str | None) -> str:
    """The mouth shape for an eSpeak phoneme mnemonic; silence for None or anything unknown."""
    if not phoneme:
        return SILENCE
    symbol = phoneme.lstrip("',%=").replace(":", "")
    for size in range(min(_LONGEST, len(symbol)), 0, -1):
        shape = _BY_PHONEME.get(symbol[:size])
        if shape is not None:
            return shape
    return SILENCE
