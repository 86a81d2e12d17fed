"""The worker's role: one page message in, one page of Markdown out (page work, the OCR
client and its streamed replies, loop detection, ID tokens, push authentication)."""
