"""The voice stage (`stage`) and its parts: listening (VAD, turns, capture), recognition
(Whisper), and speaking (synthesis, visemes, the speaker's queue)."""
