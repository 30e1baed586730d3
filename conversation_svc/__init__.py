"""conversation_svc: owns conversation sessions (transcripts stream -> responses stream)."""
