"""The long-running ingestion stream: landing folder -> MobileNetV2 features -> Delta."""
