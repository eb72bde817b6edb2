"""Voice: listening to the user (VAD, levels, turns) and giving the avatar a voice (synthesis, mixing)."""
