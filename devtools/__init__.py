"""Development tooling, not the product: a local Kafka broker, a fake embedding API,
the demo and its deterministic sample comments. Tests, benchmarks and `make demo` use it."""
