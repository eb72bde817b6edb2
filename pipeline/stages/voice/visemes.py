"""Mouth shapes for phonemes: eSpeak NG's mnemonics and IPA (Piper's) mapped to fifteen visemes.

The viseme set is the common one for lip-sync (silence, PP, FF, TH, DD, kk, CH, SS, nn, RR,
aa, E, ih, oh, ou): few enough for an avatar to draw, enough that speech looks like speech.
Stress (' , ˈ ˌ) and length (: ː) marks are ignored; the longest known prefix of the symbol
decides. The two alphabets share their lower-case letters, which mean the same sounds in both;
eSpeak's mnemonics use capitals and digits where IPA has symbols of its own.
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
    # IPA, as Piper's eSpeak phonemizer writes it
    "θ": "TH", "ð": "TH",
    "ɾ": "DD", "ʔ": "DD",
    "ŋ": "kk", "ɡ": "kk",
    "ʃ": "CH", "ʒ": "CH", "tʃ": "CH", "dʒ": "CH", "ʧ": "CH", "ʤ": "CH",
    "ɹ": "RR", "ɚ": "RR", "ɝ": "RR", "ɜ": "RR",
    "ɑ": "aa", "æ": "aa", "ʌ": "aa", "ə": "aa", "ɐ": "aa", "ᵻ": "ih",
    "ɛ": "E",
    "ɪ": "ih",
    "ɔ": "oh", "ɒ": "oh",
    "ʊ": "ou",
}  # fmt: skip
_LONGEST = max(len(key) for key in _BY_PHONEME)


def viseme(phoneme: str | None) -> str:
    """The mouth shape for an eSpeak phoneme mnemonic or an IPA phoneme; silence for None or anything unknown."""
    if not phoneme:
        return SILENCE
    symbol = phoneme.lstrip("',%=ˈˌ").replace(":", "").replace("ː", "")
    for size in range(min(_LONGEST, len(symbol)), 0, -1):
        shape = _BY_PHONEME.get(symbol[:size])
        if shape is not None:
            return shape
    return SILENCE
