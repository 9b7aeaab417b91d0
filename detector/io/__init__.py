"""The edges: Kafka clients and topic ranges, record decoding, the HTTP server."""
