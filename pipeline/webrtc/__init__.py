"""The WebRTC way in: a browser sends its camera and microphone and gets the processed stream back."""
