"""Data: corpora of sentences, their word-level labels, tokenisation and word-to-token alignment."""
