"""transcriber_svc: owns transcription sessions (input stream -> transcripts stream)."""
