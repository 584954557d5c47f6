"""The SparkSession and the jars it needs."""
