"""The model's state shared across replicas through a compacted Kafka topic."""
