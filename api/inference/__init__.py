"""inference domain."""
